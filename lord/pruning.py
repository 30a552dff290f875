"""Wanda pruning (Sun et al., 2023, "A Simple and Effective Pruning Approach for Large Language Models"), the
method the paper's A.6.2 prunes LoRD models with (stage ``prune``).

For a linear layer ``y = W x`` the score of weight ``W_ij`` is ``|W_ij| * ||X_j||_2``, where ``X_j`` is input
feature ``j`` over every calibration token. Within each output row (Wanda's comparison group) the lowest scores
are set to zero:

* ``unstructured``: ``floor(sparsity * d_in)`` weights of every row;
* ``N:M`` (e.g. ``2:4``): ``N`` of every ``M`` consecutive weights of a row (sparsity ``N/M``).

As in the published method, blocks are pruned in order: the inputs of block ``i`` come from blocks ``0..i-1``
already pruned, and all linears of a block take their input norms from one pass of the unpruned block. Every
``nn.Linear`` inside the transformer blocks is pruned -- a dense model's projections, a LoRD model's factors
``A`` and ``B`` (a group's shared ``A`` once); embeddings and the LM head are left dense, as Wanda leaves them.
Zeros are stored as zeros in the dense weight tensors (no sparse kernels): pruning changes the count of nonzero
weights, not memory or speed.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
import torch.nn as nn

from lord.architectures import architecture_for, block_linears
from lord.calibration import advance_inputs, block_inputs, run_hooked
from lord.errors import LordError
from lord.progress import progress_bar

PATTERNS = ("unstructured", "N:M")


@dataclass(frozen=True)
class PruneSpec:
    """``sparsity`` in [0, 1) for ``unstructured``; ``pattern="2:4"`` (any ``N:M``, N < M) sets it to N/M."""

    sparsity: float = 0.5
    pattern: str = "unstructured"

    @property
    def n_m(self) -> tuple[int, int] | None:
        return None if self.pattern == "unstructured" else tuple(int(v) for v in self.pattern.split(":"))

    @property
    def effective_sparsity(self) -> float:
        return self.sparsity if self.n_m is None else self.n_m[0] / self.n_m[1]

    def check(self) -> None:
        if self.pattern != "unstructured":
            parts = self.pattern.split(":") if isinstance(self.pattern, str) else []
            if len(parts) != 2 or not all(p.isdigit() for p in parts) or not 0 < int(parts[0]) < int(parts[1]):
                raise LordError(f"prune.pattern={self.pattern!r} must be 'unstructured' or N:M with 0 < N < M "
                                "(e.g. 2:4: two of every four consecutive weights of a row are zeroed)")
        elif isinstance(self.sparsity, bool) or not isinstance(self.sparsity, (int, float)) \
                or not 0 <= self.sparsity < 1:
            raise LordError(f"prune.sparsity={self.sparsity!r} must be a number in [0, 1) (the share of each "
                            "row's weights set to zero)")


def wanda_mask(weight: torch.Tensor, input_norm: torch.Tensor, spec: PruneSpec) -> torch.Tensor:
    """Boolean mask of the weights to zero: the lowest ``|W_ij| * input_norm_j`` of each row (module docstring).
    Ties are broken by position (lower column first), so the mask is deterministic."""
    score = weight.detach().abs().to(torch.float64) * input_norm.to(weight.device, torch.float64)[None, :]
    d_out, d_in = score.shape
    mask = torch.zeros_like(score, dtype=torch.bool)
    if spec.n_m is None:
        k = int(spec.sparsity * d_in)
        if k:
            idx = torch.sort(score, dim=1, stable=True).indices[:, :k]
            mask.scatter_(1, idx, True)
        return mask
    n, m = spec.n_m
    if d_in % m:
        raise LordError(f"prune.pattern={spec.pattern}: a layer with {d_in} inputs is not a whole number of groups "
                        f"of {m}; use prune.pattern=unstructured for this model")
    groups = score.reshape(d_out, d_in // m, m)
    idx = torch.sort(groups, dim=2, stable=True).indices[:, :, :n]
    return mask.reshape(d_out, d_in // m, m).scatter_(2, idx, True).reshape(d_out, d_in)


class InputNorms:
    """Sum over tokens of ``x_j^2`` for each input feature of one linear layer (float64)."""

    def __init__(self, d_in: int, device=None):
        self.sq = torch.zeros(d_in, dtype=torch.float64, device=device)
        self.tokens = 0
        self._last = None  # a group's shared A is called by each member on the same tensor: count it once

    def update(self, x: torch.Tensor) -> None:
        if self._last is not None and self._last() is x:
            return
        self._last = weakref.ref(x)
        flat = x.detach().reshape(-1, x.shape[-1])
        self.sq += flat.to(torch.float64).square().sum(0)
        self.tokens += flat.shape[0]

    def norm(self) -> torch.Tensor:
        return self.sq.sqrt()


def prune_model(model: nn.Module, batches, spec: PruneSpec, architecture=None, progress: bool = True) -> dict:
    """Prune every linear inside ``model``'s blocks in place, block by block (module docstring); returns a
    record: per layer its shape and zeros, and the totals."""
    spec.check()
    arch = architecture_for(model, architecture)
    blocks = model.get_submodule(arch.blocks)
    device = next(model.parameters()).device
    states = block_inputs(model, blocks[0], batches, device)
    layers, zeros, weights = [], 0, 0
    for i in progress_bar(range(len(blocks)), desc="prune", unit="block", disable=not progress):
        block = blocks[i]
        linears = block_linears(block)
        norms = {name: InputNorms(mod.in_features, device) for name, mod in linears.items()}
        hooks = [mod.register_forward_hook(lambda _m, args, _out, acc=norms[name]: acc.update(args[0]))
                 for name, mod in linears.items()]
        run_hooked(block, states, hooks)
        for name, mod in linears.items():
            if not norms[name].tokens:
                raise LordError(f"block {i}: {name} saw no input in the calibration pass; it cannot be scored")
            mask = wanda_mask(mod.weight, norms[name].norm(), spec)
            with torch.no_grad():
                mod.weight.masked_fill_(mask.to(mod.weight.device), 0)
            z = int((mod.weight == 0).sum())
            layers.append({"name": f"{arch.blocks}.{i}.{name}", "block": i, "shape": list(mod.weight.shape),
                           "zeros": z, "tokens": norms[name].tokens})
            zeros, weights = zeros + z, weights + mod.weight.numel()
        advance_inputs(block, states)
    return {"pattern": spec.pattern, "sparsity": spec.effective_sparsity, "layers": layers,
            "pruned_weights": weights, "zeros": zeros, "achieved_sparsity": zeros / weights if weights else 0.0}


def nonzero_parameters(model: nn.Module) -> int:
    """Parameters that are not zero (shared tensors once)."""
    return sum(int(torch.count_nonzero(p)) for p in model.parameters())

"""Kronecker-factored curvature of the loss for each target layer: the statistics of the ``kfac`` method.

For a linear layer ``y = W x + b`` inside a language model trained with next-token cross-entropy, K-FAC
approximates the Fisher (the curvature of the loss in ``W``) by a Kronecker product of two second moments,

    A = E[x x^T]        (d_in x d_in: the layer's inputs, as ``whiten`` uses them)
    G = E[g g^T]        (d_out x d_out: g = dLoss/dy, the loss's gradient at the layer's output),

so that changing ``W`` by ``D`` raises the loss by about ``1/2 tr(G D A D^T)`` per token. The expectation runs over
the calibration tokens, with the loss summed over the window's predicted tokens (each token's own gradient) and
the labels the data's own next tokens (the empirical Fisher).

Collecting ``G`` needs a backward pass: every parameter is frozen for it (no weight gradient is formed), the
embedding output is made to require a gradient, and a tensor hook on each target's output adds ``g g^T``. ``A`` comes
from forward hooks on the same pass. Targets reading the same input share one ``A``; a group (q/k/v, gate/up) keeps
one ``G`` per member (its output gradient covariance is block-diagonal in this approximation).

``output="full"`` keeps every ``G`` (the 0.5B model: ~4.8 GB in float32 for all linear layers); ``"diagonal"``
keeps only ``diag(G)`` (memory of the order of the outputs; the approximation the 1.5B model needs, where the
full matrices would take ~18 GB); ``"identity"`` collects no ``G`` (the method then equals ``whiten``).

Precision: each window's Gram matrices are formed in float32 and added into float32 sums (16-64 windows: a
relative rounding error of a few 1e-7, far below the statistical error of the estimate); bases are computed from
them in float64.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import safe_open

from lord.architectures import Target
from lord.calibration import CHUNK_ROWS, _save_atomic, counted_positions, target_shape
from lord.errors import LordError
from lord.progress import progress_bar

OUTPUT_FORMS = ("full", "diagonal", "identity")


class SecondMoment:
    """Running float32 sum of ``v v^T`` (or of ``v * v`` when ``diagonal``) over ``n`` vectors."""

    def __init__(self, dim: int, diagonal: bool = False, device=None):
        self.diagonal = diagonal
        shape = (dim,) if diagonal else (dim, dim)
        self.sum = torch.zeros(shape, dtype=torch.float32, device=device)
        self.n = 0

    @property
    def dim(self) -> int:
        return self.sum.shape[0]

    def update(self, v: torch.Tensor) -> None:
        v = v.detach().reshape(-1, self.dim)
        for chunk in v.split(CHUNK_ROWS):
            c = chunk.to(device=self.sum.device, dtype=torch.float32)
            self.sum += c.square().sum(0) if self.diagonal else c.T @ c
        self.n += v.shape[0]

    def matrix(self) -> torch.Tensor:
        """``E[v v^T]`` in float64 (diagonal: the diagonal matrix of ``E[v_i^2]``)."""
        m = self.sum.to(torch.float64) / max(self.n, 1)
        return torch.diag(m) if self.diagonal else (m + m.T) / 2


@dataclass
class Curvature:
    """A target's K-FAC factors: ``A`` of its input, one ``G`` per member (None for ``output="identity"``)."""

    A: SecondMoment
    G: list[SecondMoment] | None

    def output_metric(self) -> torch.Tensor | None:
        """The members' ``G`` as one block-diagonal float64 matrix (None: the identity)."""
        return None if self.G is None else torch.block_diag(*[g.matrix() for g in self.G])


def input_key(target: Target) -> str:
    return f"A:{target.input_key}"


def output_keys(target: Target) -> list[str]:
    return [f"G:{m}" for m in target.members]


def collect_curvature(model: nn.Module, targets: list[Target], batches, output: str = "full", progress: bool = True,
                      skip_first: int = 0) -> dict[str, SecondMoment]:
    """``{"A:<input>": ..., "G:<member>": ...}`` for ``targets`` from one forward and backward pass per batch."""
    if output not in OUTPUT_FORMS:
        raise LordError(f"kfac output metric {output!r} is unknown; allowed: {', '.join(OUTPUT_FORMS)}")
    if any(t.kind in ("embed", "lm_head") for t in targets):
        raise LordError("method kfac decomposes block linear layers; leave 'embed' and 'lm_head' out of layers.kinds")
    device = next(model.parameters()).device
    stats: dict[str, SecondMoment] = {}
    handles = []
    for t in targets:
        d_in, d_outs = target_shape(model, t)
        if input_key(t) not in stats:
            acc = stats[input_key(t)] = SecondMoment(d_in, device=device)

            def in_hook(_m, args, _out, acc=acc):
                acc.update(counted_positions(args[0], skip_first))
            handles.append(model.get_submodule(t.members[0]).register_forward_hook(in_hook))
        if output == "identity":
            continue
        for member, key, d_out in zip(t.members, output_keys(t), d_outs):
            g_acc = stats[key] = SecondMoment(d_out, diagonal=output == "diagonal", device=device)

            def out_hook(_m, _args, out, acc=g_acc):
                if out.requires_grad:
                    out.register_hook(lambda g, acc=acc: acc.update(counted_positions(g, skip_first)))
            handles.append(model.get_submodule(member).register_forward_hook(out_hook))

    def grad_from_embeddings(_m, _args, out):
        return out.detach().requires_grad_(True)  # gradients reach every block, none reaches a weight
    handles.append(model.get_input_embeddings().register_forward_hook(grad_from_embeddings))
    frozen = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    model.eval()
    try:
        for p, _ in frozen:
            p.requires_grad_(False)
        windows = [w for batch in batches for w in batch.split(1)]  # one window at a time: the backward keeps
        for window in progress_bar(windows, desc="curvature (forward + backward)", unit="window",  # every block's
                                   disable=not progress):                                          # activations
            ids = window.to(device)
            with torch.enable_grad():
                logits = model(input_ids=ids, use_cache=False).logits[:, :-1]
                loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                                   ids[:, 1:].reshape(-1), reduction="sum")
                if output != "identity":
                    loss.backward()
            del logits, loss
    finally:
        for h in handles:
            h.remove()
        for p, flag in frozen:
            p.requires_grad_(flag)
        model.train(was_training)
    return stats


def curvature_for(stats: dict[str, SecondMoment], target: Target, output: str) -> Curvature:
    if input_key(target) not in stats:
        raise LordError(f"no curvature statistics for {target.name}; calibrate with the same layer selection")
    G = None if output == "identity" else [stats[k] for k in output_keys(target)]
    return Curvature(stats[input_key(target)], G)


def save_curvature(stats: dict[str, SecondMoment], path: str | Path) -> None:
    tensors = {}
    for k, m in stats.items():
        tensors[f"{k}::sum"] = m.sum.cpu().contiguous()
        tensors[f"{k}::n"] = torch.tensor([m.n], dtype=torch.int64)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    _save_atomic(tensors, Path(path))


def load_curvature(path: str | Path, device=None) -> dict[str, SecondMoment]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            stats = {}
            for k in sorted(k[: -len("::n")] for k in f.keys() if k.endswith("::n")):
                s = f.get_tensor(f"{k}::sum")
                m = SecondMoment(s.shape[0], diagonal=s.dim() == 1, device=device)
                m.sum.copy_(s)
                m.n = int(f.get_tensor(f"{k}::n").item())
                stats[k] = m
    except Exception as e:  # truncated or foreign file
        raise LordError(f"curvature statistics file {path} is unreadable ({e}); "
                        "delete it and calibrate again") from None
    return stats

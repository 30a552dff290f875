"""Module surgery: which targets a selection means, with which ranks (``plan``), and swapping each target's
dense modules for low-rank ones (``apply_structure``) and writing factors into them (``write_factors``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
import torch.nn as nn

from lord.architectures import Target, select_targets
from lord.calibration import target_shape
from lord.hf import modeling_lord
from lord.modules import dense_weight, shared_name
from lord.ranks import RankSpec


@dataclass
class Decomposition:
    """One replaced target: everything needed to rebuild its structure (this is what lord.json stores)."""

    members: list[str]
    kind: str
    block: int | None
    rank: int
    d_in: int
    d_outs: list[int]
    bias: list[bool]

    @property
    def name(self) -> str:
        return "+".join(self.members)

    @property
    def dense_params(self) -> int:
        return sum(d * self.d_in for d in self.d_outs) + sum(d for d, b in zip(self.d_outs, self.bias) if b)

    @property
    def lowrank_params(self) -> int:
        return self.rank * (self.d_in + sum(self.d_outs)) + sum(d for d, b in zip(self.d_outs, self.bias) if b)


class Planned(NamedTuple):
    target: Target
    decomposition: Decomposition


def plan_targets(model: nn.Module, targets: list[Target], rank: RankSpec, keeps_mean: bool = False) -> list[Planned]:
    """Each target with its rank; raises ``LordError`` for any bad rank before work starts.
    ``keeps_mean``: the method gives every member an output bias (``lord_meanfix``)."""
    out = []
    for t in targets:
        d_in, d_outs = target_shape(model, t)
        r = rank.resolve(sum(d_outs), d_in, what=t.name)
        has_bias = [keeps_mean or dense_weight(model.get_submodule(m))[1] is not None for m in t.members]
        out.append(Planned(t, Decomposition(list(t.members), t.kind, t.block, r, d_in, d_outs, has_bias)))
    return out


def plan(model: nn.Module, cfg) -> list[Planned]:
    """Targets and ranks of a ``CompressionConfig``, validated before any work (meta models work too)."""
    from lord.methods import get_method

    targets = select_targets(model, cfg.kinds, cfg.group, cfg.layers, cfg.architecture)
    return plan_targets(model, targets, cfg.rank, get_method(cfg.method).keeps_mean)


set_module = modeling_lord.set_module  # the checkpoint's self-contained code owns it


def apply_structure(model: nn.Module, decs: list[Decomposition], device=None, dtype=None) -> dict[str, nn.Module]:
    """Swap each target's modules for empty low-rank ones of the right shapes; returns the new modules
    (``modeling_lord.apply_structure``: the code a saved checkpoint runs)."""
    return modeling_lord.apply_structure(model, decompositions_to_json(decs), device=device, dtype=dtype)


def dense_W_b(model: nn.Module, members) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Stacked (W, b) of a target's members, in float64; missing member biases count as zero."""
    Ws, bs = [], []
    for m in members:
        W, b = dense_weight(model.get_submodule(m))
        Ws.append(W.detach().to(torch.float64))
        bs.append(None if b is None else b.detach().to(torch.float64))
    b = None
    if any(x is not None for x in bs):
        b = torch.cat([x if x is not None else torch.zeros(w.shape[0], dtype=torch.float64, device=w.device)
                       for x, w in zip(bs, Ws)])
    return torch.cat(Ws), b


@torch.no_grad()
def write_factors(model: nn.Module, d: Decomposition, A: torch.Tensor, B: torch.Tensor,
                  bias: torch.Tensor | None) -> None:
    """Replace target ``d`` by low-rank modules holding ``B @ A`` (+ ``bias``)."""
    new = apply_structure(model, [d])
    if len(d.members) == 1:
        mod = new[d.members[0]]
        mod[0].weight.copy_(A.T if d.kind == "embed" else A)
        mod[1].weight.copy_(B)
        if mod[1].bias is not None:
            mod[1].bias.copy_(bias)
        return
    parent = d.members[0].rsplit(".", 1)[0]
    new[f"{parent}.{shared_name(d.members)}"].weight.copy_(A)
    row = 0
    for m, d_out in zip(d.members, d.d_outs):
        lin = new[m].B
        lin.weight.copy_(B[row:row + d_out])
        if lin.bias is not None:
            lin.bias.copy_(bias[row:row + d_out])
        row += d_out


def decompositions_to_json(decs: list[Decomposition]) -> list[dict]:
    return [asdict(d) for d in decs]


def decompositions_from_json(items: list[dict]) -> list[Decomposition]:
    return [Decomposition(**it) for it in items]

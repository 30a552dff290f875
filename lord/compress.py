"""Compress a causal LM: select targets, calibrate, decompose, replace modules (paper Algorithm 1).

``compress_model`` is the one call most users need. The pieces are public for sweeps:
``plan`` resolves targets and ranks (all validation happens here, before any work),
``calibrate`` gathers statistics, ``compute_bases`` turns them into one basis per target (reusable for
every rank), and ``apply_plan`` writes the factors into the model.

Calibration modes:

* ``oneshot`` — one pass of the dense model; the statistics (and bases) serve every rank and method.
* ``sequential`` — block by block: block ``i`` is calibrated on the hidden states produced by blocks
  ``0..i-1`` *already compressed* (Algorithm 1 updates the model inside its loop). Hidden states of
  all calibration windows are kept between blocks, so the cost is about two dense forward passes.
  Valid only for the rank it was run with.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn

from lord.architectures import Target, architecture_for, select_targets
from lord.calibration import Moments, StopForward, register_stat_hooks, collect_statistics, stat_slot, target_shape
from lord.errors import LordError
from lord.methods import DATA_FREE, METHODS, Basis, compute_basis, factors
from lord.modules import (GroupedLowRankLinear, LowRankEmbedding, LowRankLinear, SharedBottleneck, dense_weight,
                          shared_name)
from lord.progress import progress_bar
from lord.ranks import RankSpec

CALIBRATION_MODES = ("oneshot", "sequential")


@dataclass
class CompressionConfig:
    method: str = "lord"
    kinds: list = field(default_factory=lambda: ["mlp_down"])
    rank: RankSpec = field(default_factory=RankSpec)
    group: bool = False
    layers: list | None = None  # block indices; None = every block
    calibration: str = "oneshot"
    architecture: dict | None = None  # mapping for an architecture lord does not know

    def __post_init__(self):
        if self.method not in METHODS:
            raise LordError(f"unknown method {self.method!r}; choose from: {', '.join(METHODS)}")
        if self.calibration not in CALIBRATION_MODES:
            raise LordError(f"unknown calibration mode {self.calibration!r}; choose from: {', '.join(CALIBRATION_MODES)}")
        if isinstance(self.rank, dict):
            self.rank = RankSpec(**self.rank)


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


def plan(model: nn.Module, cfg: CompressionConfig) -> tuple[list[Target], list[Decomposition]]:
    """Targets and their ranks; raises ``LordError`` for any bad selection or rank before work starts."""
    targets = select_targets(model, cfg.kinds, cfg.group, cfg.layers, cfg.architecture)
    decs = []
    for t in targets:
        d_in, d_outs = target_shape(model, t)
        rank = cfg.rank.resolve(sum(d_outs), d_in, what=t.name)
        has_bias = [dense_weight(model.get_submodule(m))[1] is not None for m in t.members]
        if cfg.method == "lord_meanfix":  # keeping the output mean gives every member a bias
            has_bias = [True] * len(t.members)
        decs.append(Decomposition(list(t.members), t.kind, t.block, rank, d_in, d_outs, has_bias))
    return targets, decs


def _untie_if_needed(model: nn.Module, decs: list[Decomposition]) -> None:
    """Decomposing the embedding or the LM head of a tied model unties them first."""
    if not any(d.kind in ("embed", "lm_head") for d in decs):
        return
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "tie_word_embeddings", False):
        out = model.get_output_embeddings()
        if out is not None:
            out.weight = nn.Parameter(out.weight.detach().clone())
        config.tie_word_embeddings = False


def apply_structure(model: nn.Module, decs: list[Decomposition], device=None, dtype=None) -> dict[str, nn.Module]:
    """Swap each target's modules for empty low-rank ones of the right shapes; returns the new modules."""
    _untie_if_needed(model, decs)
    new: dict[str, nn.Module] = {}
    for d in decs:
        first = model.get_submodule(d.members[0])
        ref = first.weight
        kw = dict(device=device if device is not None else ref.device, dtype=dtype if dtype is not None else ref.dtype)
        if d.kind == "embed":
            mod = LowRankEmbedding(first.num_embeddings, d.d_outs[0], d.rank, bias=d.bias[0],
                                   padding_idx=first.padding_idx, **kw)
            _set_module(model, d.members[0], mod)
            new[d.members[0]] = mod
        elif len(d.members) == 1:
            mod = LowRankLinear(d.d_in, d.d_outs[0], d.rank, bias=d.bias[0], **kw)
            _set_module(model, d.members[0], mod)
            new[d.members[0]] = mod
        else:
            shared = SharedBottleneck(d.d_in, d.rank, **kw)
            parent_name = d.members[0].rsplit(".", 1)[0]
            model.get_submodule(parent_name).add_module(shared_name(d.members), shared)
            new[f"{parent_name}.{shared_name(d.members)}"] = shared
            for m, d_out, b in zip(d.members, d.d_outs, d.bias):
                mod = GroupedLowRankLinear(shared, d_out, bias=b, **kw)
                _set_module(model, m, mod)
                new[m] = mod
    return new


def _set_module(model: nn.Module, name: str, mod: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, mod)


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


def compute_target_basis(model: nn.Module, t: Target, method: str, stats: dict[str, Moments] | None) -> Basis:
    W, _ = dense_W_b(model, t.members)
    if method in DATA_FREE:
        return compute_basis(method, W, None, None)
    slot = stat_slot(model, t)
    if stats is None or slot.key not in stats:
        raise LordError(f"no calibration statistics for {t.name}; calibrate with the same layer selection")
    return compute_basis(method, W, stats[slot.key], slot.side)


def compute_bases(model: nn.Module, targets: list[Target], method: str, stats: dict[str, Moments] | None,
                  progress: bool = True) -> dict[str, Basis]:
    """Every target's basis, kept in memory (float32 Q) so that many ranks can be applied from them."""
    bases = {}
    for t in progress_bar(targets, desc=f"{method} bases", unit="layer", disable=not progress):
        b = compute_target_basis(model, t, method, stats)
        bases[t.name] = Basis(b.Q.to(torch.float32), b.spectrum, b.mean_z)
    return bases


@torch.no_grad()
def apply_plan(model: nn.Module, targets: list[Target], decs: list[Decomposition], method: str,
               bases: dict[str, Basis]) -> None:
    """Replace every target by its rank-``d.rank`` factors (dense weights are read before being replaced)."""
    for t, d in zip(targets, decs):
        W, b = dense_W_b(model, t.members)
        A, B, bias = factors(method, bases[t.name], W, b, d.rank)
        new = apply_structure(model, [d])
        if d.kind == "embed":
            mod = new[d.members[0]]
            mod[0].weight.copy_(A.T)
            mod[1].weight.copy_(B)
            if bias is not None:
                mod[1].bias.copy_(bias)
        elif len(d.members) == 1:
            mod = new[d.members[0]]
            mod[0].weight.copy_(A)
            mod[1].weight.copy_(B)
            if mod[1].bias is not None:
                mod[1].bias.copy_(bias)
        else:
            parent = d.members[0].rsplit(".", 1)[0]
            new[f"{parent}.{shared_name(d.members)}"].weight.copy_(A)
            row = 0
            for m, d_out in zip(d.members, d.d_outs):
                lin = new[m].B
                lin.weight.copy_(B[row:row + d_out])
                if lin.bias is not None:
                    lin.bias.copy_(bias[row:row + d_out])
                row += d_out


def calibrate(model: nn.Module, targets: list[Target], batches, architecture=None, progress: bool = True):
    arch = architecture_for(model, architecture)
    return collect_statistics(model, targets, batches, blocks_path=arch.blocks, progress=progress)


def compress_model(model: nn.Module, cfg: CompressionConfig, batches=None, stats=None, bases=None,
                   keep_bases: bool = False, progress: bool = True) -> dict:
    """Compress ``model`` in place. Returns a report with the plan and the statistics (for reuse).

    ``batches``: a list of LongTensors of token ids (calibration windows), needed by every method but
    ``svd`` unless ``stats`` (oneshot) or ``bases`` are given. By default each target's basis is computed,
    applied and freed in turn (peak memory stays near model + statistics); ``keep_bases=True`` keeps them
    all (float32) in ``report["bases"]`` so that other ranks can be applied without recomputing them.
    """
    targets, decs = plan(model, cfg)
    needs_data = cfg.method not in DATA_FREE
    if cfg.calibration == "sequential" and needs_data:
        if batches is None:
            raise LordError("sequential calibration needs calibration batches")
        _compress_sequential(model, targets, decs, cfg, batches, progress)
        return _report(cfg, decs, stats=None, bases=None)
    if bases is None:
        if needs_data and stats is None:
            if batches is None:
                raise LordError(f"method {cfg.method!r} needs calibration data: pass batches, stats or bases")
            stats = calibrate(model, targets, batches, cfg.architecture, progress)
        if keep_bases:
            bases = compute_bases(model, targets, cfg.method, stats, progress)
        else:
            for t, d in progress_bar(list(zip(targets, decs)), desc=f"{cfg.method} decomposition", unit="layer",
                                     disable=not progress):
                apply_plan(model, [t], [d], cfg.method, {t.name: compute_target_basis(model, t, cfg.method, stats)})
            return _report(cfg, decs, stats, None)
    apply_plan(model, targets, decs, cfg.method, bases)
    return _report(cfg, decs, stats, bases)


def _report(cfg, decs, stats, bases) -> dict:
    return {
        "method": cfg.method,
        "calibration": cfg.calibration,
        "decompositions": decs,
        "dense_params": sum(d.dense_params for d in decs),
        "lowrank_params": sum(d.lowrank_params for d in decs),
        "stats": stats,
        "bases": bases,
    }


def _compress_sequential(model, targets, decs, cfg, batches, progress):
    arch = architecture_for(model, cfg.architecture)
    pre = [(t, d) for t, d in zip(targets, decs) if t.block is None and t.kind == "embed"]
    post = [(t, d) for t, d in zip(targets, decs) if t.block is None and t.kind != "embed"]
    by_block: dict[int, list] = {}
    for t, d in zip(targets, decs):
        if t.block is not None:
            by_block.setdefault(t.block, []).append((t, d))

    def run_targets(pairs, stats):
        for t, d in pairs:
            apply_plan(model, [t], [d], cfg.method, {t.name: compute_target_basis(model, t, cfg.method, stats)})

    if pre:
        run_targets(pre, calibrate(model, [p[0] for p in pre], batches, cfg.architecture, progress))
    if by_block:
        blocks = model.get_submodule(arch.blocks)
        device = next(model.parameters()).device
        inputs = []

        def capture(_m, args, kwargs):
            inputs.append((args, kwargs))
            raise StopForward

        h = blocks[0].register_forward_pre_hook(capture, with_kwargs=True)
        try:
            with torch.inference_mode():
                for batch in batches:
                    try:
                        model(input_ids=batch.to(device), use_cache=False)
                    except StopForward:
                        pass
        finally:
            h.remove()
        last = max(by_block)
        for i in progress_bar(range(last + 1), desc="sequential calibration", unit="block", disable=not progress):
            block = blocks[i]
            if i in by_block:
                pairs = by_block[i]
                stats = {}
                slots = [stat_slot(model, t) for t, _ in pairs]
                for s in slots:
                    stats.setdefault(s.key, Moments(s.dim, device=device))
                handles = register_stat_hooks(model, slots, stats)
                try:
                    with torch.inference_mode():
                        for args, kwargs in inputs:
                            block(*args, **kwargs)
                finally:
                    for hd in handles:
                        hd.remove()
                run_targets(pairs, stats)
            if i < last:
                with torch.inference_mode():
                    for j, (args, kwargs) in enumerate(inputs):
                        out = block(*args, **kwargs)
                        hidden = out[0] if isinstance(out, tuple) else out
                        inputs[j] = ((hidden,) + tuple(args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": hidden})
        del inputs
    if post:
        run_targets(post, calibrate(model, [p[0] for p in post], batches, cfg.architecture, progress))


def decompositions_to_json(decs: list[Decomposition]) -> list[dict]:
    return [asdict(d) for d in decs]


def decompositions_from_json(items: list[dict]) -> list[Decomposition]:
    return [Decomposition(**it) for it in items]

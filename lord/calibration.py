"""Second-moment statistics of layer inputs or outputs, gathered with forward hooks.

Every data-aware method needs only ``E[v]`` and ``E[v v^T]`` of *one* side of a layer, and we always
pick the smaller side so that no ``d_ff x d_ff`` matrix is ever formed:

* ``output`` side (``d_out < d_in``, e.g. ``mlp_down``; embeddings): moments of the bias-free outputs
  ``z = W x``, read from the module's own output minus its bias (no extra matmul);
* ``input`` side (``d_out >= d_in``, e.g. ``mlp_up``, q/k/v, groups): moments of ``x``; the output
  covariance ``W Cov(x) W^T`` is never formed, its eigenvectors come from an SVD of ``W L``.

Targets reading the same tensor (q/k/v; gate/up) share one input-side accumulator.

``skip_first=k`` leaves the first ``k`` positions of every window out of the statistics (a diagnosis option:
models such as Qwen2.5 put very large activations on a window's first token, an attention sink, which can
dominate a covariance). The layers still see every position; only what is counted changes.

Precision: each chunk of at most ``CHUNK_ROWS`` vectors is reduced in float32 and added into float64
sums. By the standard dot-product bound, each entry of a chunk's Gram matrix carries a relative error
of at most ``CHUNK_ROWS * 2**-24 ≈ 6.1e-5`` of ``|x|^T |x|`` (typically ``sqrt(CHUNK_ROWS) * 2**-24
≈ 1.9e-6``); the float64 sums add no error of that order. No activation is stored.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import save_file

from lord.architectures import Target
from lord.atomic import temp_file
from lord.errors import LordError
from lord.modules import dense_weight
from lord.progress import progress_bar

CHUNK_ROWS = 1024


class Moments:
    """Running float64 sums of ``v`` and ``v v^T`` over ``n`` vectors."""

    def __init__(self, dim: int, device=None):
        self.sum_vv = torch.zeros(dim, dim, dtype=torch.float64, device=device)
        self.sum_v = torch.zeros(dim, dtype=torch.float64, device=device)
        self.n = 0

    @property
    def dim(self) -> int:
        return self.sum_v.numel()

    def update(self, v: torch.Tensor) -> None:
        v = v.detach().reshape(-1, self.dim)
        for chunk in v.split(CHUNK_ROWS):  # with device_map, activations may live on another GPU
            c = chunk.to(device=self.sum_vv.device, dtype=torch.float32)
            self.sum_vv += (c.T @ c).to(torch.float64)
            self.sum_v += c.sum(0, dtype=torch.float64)
        self.n += v.shape[0]

    def mean(self) -> torch.Tensor:
        return self.sum_v / self.n

    def second_moment(self) -> torch.Tensor:
        return self.sum_vv / self.n

    def covariance(self) -> torch.Tensor:
        mu = self.mean()
        c = self.second_moment() - torch.outer(mu, mu)
        return (c + c.T) / 2


@dataclass(frozen=True)
class StatSlot:
    """Which accumulator a target reads and on which side of the layer it sits."""

    key: str
    side: str  # "input" | "output"
    module: str  # the module whose forward feeds the accumulator
    dim: int


def target_shape(model: nn.Module, target: Target) -> tuple[int, list[int]]:
    """(d_in, [d_out of each member]) of a target."""
    d_outs, d_in = [], None
    for m in target.members:
        W, _ = dense_weight(model.get_submodule(m))
        d_outs.append(W.shape[0])
        d_in = W.shape[1]
    return d_in, d_outs


def stat_slot(model: nn.Module, target: Target) -> StatSlot:
    d_in, d_outs = target_shape(model, target)
    if target.kind == "embed" or (len(target.members) == 1 and d_outs[0] < d_in):
        return StatSlot(f"out:{target.name}", "output", target.members[0], d_outs[0])
    return StatSlot(f"in:{target.input_key}", "input", target.members[0], d_in)


class StopForward(Exception):
    pass


# Block by block: the inputs of a model's first block for every batch, a block run on stored inputs with hooks, and
# stored inputs advanced through a block (the compressor, sequential calibration, pruning, refit and neuron
# selection all walk the blocks this way).
def block_inputs(model, first_block, batches, device) -> list:
    """The (args, kwargs) the first block receives for every calibration batch."""
    inputs = []

    def capture(_m, args, kwargs):
        inputs.append((args, kwargs))
        raise StopForward

    h = first_block.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        with torch.inference_mode():
            for batch in batches:
                try:
                    model(input_ids=batch.to(device), use_cache=False)
                except StopForward:
                    pass
    finally:
        h.remove()
    return inputs


def run_hooked(block, inputs, handles) -> None:
    """Every stored ``(args, kwargs)`` of ``inputs`` through ``block`` with the forward hooks in ``handles``, removed
    after (the block's outputs are not kept)."""
    try:
        with torch.inference_mode():
            for args, kwargs in inputs:
                block(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()


def advance_inputs(block, inputs) -> None:
    """Replace each stored block input by the block's output (the next block's input)."""
    with torch.inference_mode():
        for j, (args, kwargs) in enumerate(inputs):
            out = block(*args, **kwargs)
            hidden = out[0] if isinstance(out, tuple) else out
            inputs[j] = ((hidden,) + tuple(args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": hidden})


def counted_positions(v: torch.Tensor, skip_first: int) -> torch.Tensor:
    """The vectors a statistic counts: all of ``v`` (batch, positions, dim), without its first ``skip_first``
    positions."""
    return v[:, skip_first:] if skip_first and v.dim() == 3 else v


def register_stat_hooks(model: nn.Module, slots: list[StatSlot], stats: dict[str, Moments],
                        skip_first: int = 0) -> list:
    handles = []
    for slot in {s.key: s for s in slots}.values():
        mod = model.get_submodule(slot.module)
        acc = stats[slot.key]
        if slot.side == "input":
            def hook(_m, args, _out, acc=acc):
                acc.update(counted_positions(args[0], skip_first))
        else:
            _, bias = dense_weight(mod)

            def hook(_m, _args, out, acc=acc, bias=bias):
                acc.update(counted_positions(out if bias is None else out - bias, skip_first))
        handles.append(mod.register_forward_hook(hook))
    return handles


def _stop_module(model: nn.Module, targets: list[Target], blocks_path: str | None) -> nn.Module | None:
    """The module after which no hook can fire any more: the last target's block, or None to run it all."""
    if any(t.kind == "lm_head" for t in targets):
        return None
    last = targets[-1]
    if last.block is None or blocks_path is None:
        return model.get_submodule(last.members[0])
    return model.get_submodule(f"{blocks_path}.{last.block}")


def collect_statistics(
    model: nn.Module,
    targets: list[Target],
    batches,
    blocks_path: str | None = None,
    progress: bool = True,
    stats: dict[str, Moments] | None = None,
    skip_first: int = 0,
) -> dict[str, Moments]:
    """One pass of ``model`` over ``batches`` (LongTensors of token ids) filling every target's accumulator.

    The forward pass stops after the last block that holds a target, so the LM head (a large part of a
    small model's compute) is skipped unless it is itself a target.
    """
    return collect_statistics_per_skip(model, targets, batches, [skip_first], blocks_path, progress,
                                       {skip_first: stats} if stats is not None else None)[skip_first]


def collect_statistics_per_skip(model: nn.Module, targets: list[Target], batches, skips, blocks_path: str | None = None,
                                progress: bool = True, stats: dict | None = None) -> dict[int, dict[str, Moments]]:
    """``collect_statistics`` for several ``skip_first`` values at once: {skip: statistics}, one forward pass."""
    slots = [stat_slot(model, t) for t in targets]
    device = next(model.parameters()).device
    stats = stats if stats is not None else {}
    handles = []
    for k in skips:
        per = stats.setdefault(k, {})
        for s in slots:
            per.setdefault(s.key, Moments(s.dim, device=device))
        handles += register_stat_hooks(model, slots, per, k)
    _calibration_pass(model, targets, batches, blocks_path, progress, handles)
    return stats


def _calibration_pass(model: nn.Module, targets: list[Target], batches, blocks_path: str | None, progress: bool,
                      handles: list) -> None:
    """One forward pass over ``batches`` with the statistic hooks in ``handles`` (removed afterwards), stopped
    after the last block that holds a target."""
    device = next(model.parameters()).device
    stop = _stop_module(model, targets, blocks_path)
    if stop is not None:
        def raise_stop(*_):
            raise StopForward
        handles.append(stop.register_forward_hook(raise_stop))
    try:
        with torch.inference_mode():
            for batch in progress_bar(batches, desc="calibration", unit="batch", disable=not progress):
                try:
                    model(input_ids=batch.to(device), use_cache=False)
                except StopForward:
                    pass
    finally:
        for h in handles:
            h.remove()


class ChannelAbsMean:
    """Running float64 sum of ``|x_j|`` per input channel over ``n`` vectors (ASVD's activation scale)."""

    def __init__(self, dim: int, device=None):
        self.sum_abs = torch.zeros(dim, dtype=torch.float64, device=device)
        self.n = 0

    @property
    def dim(self) -> int:
        return self.sum_abs.numel()

    def update(self, v: torch.Tensor) -> None:
        v = v.detach().reshape(-1, self.dim)
        for chunk in v.split(CHUNK_ROWS):
            self.sum_abs += chunk.to(device=self.sum_abs.device, dtype=torch.float32).abs().sum(0, dtype=torch.float64)
        self.n += v.shape[0]

    def mean(self) -> torch.Tensor:
        return self.sum_abs / self.n


def channel_key(target: Target) -> str:
    """The channel statistic a target reads: its input's (shared by targets reading one tensor, q/k/v; gate/up)."""
    return f"abs:{target.input_key}"


def collect_channel_abs_means(model: nn.Module, targets: list[Target], batches, blocks_path: str | None = None,
                              progress: bool = True, skip_first: int = 0) -> dict[str, ChannelAbsMean]:
    """Mean ``|x_j|`` of every target's input channels, one forward pass (the inputs of both sides' layers)."""
    if any(t.kind == "embed" for t in targets):
        raise LordError("channel statistics scale a layer's input channels; the embedding has none (leave "
                        "'embed' out of layers.kinds for this method)")
    device = next(model.parameters()).device
    stats: dict[str, ChannelAbsMean] = {}
    handles = []
    for t in targets:
        key = channel_key(t)
        if key in stats:
            continue
        d_in, _ = target_shape(model, t)
        acc = stats[key] = ChannelAbsMean(d_in, device=device)

        def hook(_m, args, _out, acc=acc):
            acc.update(counted_positions(args[0], skip_first))
        handles.append(model.get_submodule(t.members[0]).register_forward_hook(hook))
    _calibration_pass(model, targets, batches, blocks_path, progress, handles)
    return stats


def save_channel_statistics(stats: dict[str, ChannelAbsMean], path: str | Path) -> None:
    """Atomically write channel accumulators (float64), as ``save_statistics`` does moments."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for k, m in stats.items():
        tensors[f"{k}::sum_abs"] = m.sum_abs.cpu().contiguous()
        tensors[f"{k}::n"] = torch.tensor([m.n], dtype=torch.int64)
    _save_atomic(tensors, path)


def load_channel_statistics(path: str | Path, device=None) -> dict[str, ChannelAbsMean]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            stats = {}
            for k in sorted(k[: -len("::n")] for k in f.keys() if k.endswith("::n")):
                s = f.get_tensor(f"{k}::sum_abs")
                m = ChannelAbsMean(s.numel(), device=device)
                m.sum_abs.copy_(s)
                m.n = int(f.get_tensor(f"{k}::n").item())
                stats[k] = m
    except Exception as e:  # truncated or foreign file
        raise LordError(f"channel statistics file {path} is unreadable ({e}); delete it and calibrate again") from None
    return stats


def save_statistics(stats: dict[str, Moments], path: str | Path, meta: dict) -> None:
    """Atomically write accumulators (float64) plus a JSON description next to them."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for k, m in stats.items():
        tensors[f"{k}::sum_vv"] = m.sum_vv.cpu().contiguous()
        tensors[f"{k}::sum_v"] = m.sum_v.cpu().contiguous()
        tensors[f"{k}::n"] = torch.tensor([m.n], dtype=torch.int64)
    _save_atomic(tensors, path, {"lord_meta": json.dumps(meta, sort_keys=True)})


def _save_atomic(tensors: dict, path: Path, metadata: dict | None = None) -> None:
    """Write a safetensors file through a temporary file and a rename (readers never see half a file)."""
    tmp = temp_file(path.parent, ".safetensors")
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_statistics(path: str | Path, device=None, keys=None) -> dict[str, Moments]:
    """Accumulators written by ``save_statistics``: all of them, or only the statistics named in ``keys``."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            names = set(f.keys())
            wanted = sorted(k[: -len("::n")] for k in names if k.endswith("::n"))
            if keys is not None:
                missing = sorted(set(keys) - set(wanted))
                if missing:
                    raise LordError(f"statistics file {path} has no {missing[0]!r}")
                wanted = sorted(keys)
            stats: dict[str, Moments] = {}
            for k in wanted:
                sum_v = f.get_tensor(f"{k}::sum_v")
                m = Moments(sum_v.numel(), device=device)
                m.sum_vv.copy_(f.get_tensor(f"{k}::sum_vv"))
                m.sum_v.copy_(sum_v)
                m.n = int(f.get_tensor(f"{k}::n").item())
                stats[k] = m
    except LordError:
        raise
    except Exception as e:  # truncated or foreign file
        raise LordError(f"statistics file {path} is unreadable ({e}); delete it and calibrate again") from None
    return stats

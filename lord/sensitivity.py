"""How much each matrix, alone at each option, changes the model's predictions: the table behind
``rank.allocation=measured`` (``lord.allocation.knapsack``).

For every target and every rank option (the ranks keeping ``1 - f`` of its parameters, ``f`` in
``sensitivity.grid``), only that target is decomposed at that rank (an MLP block of neuron selection: keeps that
many neurons, ``lord.neuron_selection``); the model runs on held-out calibration
windows -- windows of the calibration split that the statistics did not use, cut to ``sensitivity.seq_len``
tokens -- and the cost is the mean per-token KL divergence ``KL(p_dense || p_option)`` of the next-token
distributions. Blocks before the target's are not run again: each block's dense input is stored once, and the
run starts at the target's block, so a measurement costs the blocks from there on plus the LM head.

The table holds one KL per (target, rank) and is kept once per (model weights, calibration statistics, method basis,
windows) under ``<cache>/sensitivity/<key>.json``, rewritten after every target, so an interrupted measurement
resumes where it stopped; a budget sweep reads it for every budget, and another ``sensitivity.grid`` measures only
the ranks the table lacks (a coarser grid whose ranks are all there measures nothing). Each run is offered only its
own grid's ranks. Tables from before this layout (their key also named the grid and the rank step; the run's grid
and the default grid are looked up) fill in what the new one lacks. The record says how many options and forward
passes the measurement cost, and how many seconds (in this process, and in all).
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from lord.allocation.base import rank_options
from lord.architectures import architecture_for
from lord.atomic import read_json, write_json_atomic
from lord.errors import LordError
from lord.progress import progress_bar

log = logging.getLogger(__name__)

FINAL_NORMS = ("norm", "ln_f", "final_layernorm", "final_layer_norm")


def final_norm(model):
    """The module between the last block and the LM head (or None when there is none)."""
    base = model.base_model
    for name in FINAL_NORMS:
        if hasattr(base, name):
            return getattr(base, name)
    raise LordError(f"allocation 'measured' runs the model from a block onward and needs its final norm; "
                    f"{type(base).__name__} has none of {', '.join(FINAL_NORMS)}")


class BlockRunner:
    """The dense inputs of every block on ``windows``, and running blocks ``i..`` plus the head from them."""

    def __init__(self, model, windows: torch.Tensor, blocks_path: str):
        self.model, self.blocks = model, model.get_submodule(blocks_path)
        self.norm, self.head = final_norm(model), model.get_output_embeddings()
        self.inputs: list[tuple] = []
        device = next(model.parameters()).device

        def keep(_m, args, kwargs):
            self.inputs.append((args, kwargs))
        handles = [b.register_forward_pre_hook(keep, with_kwargs=True) for b in self.blocks]
        try:
            with torch.inference_mode():
                dense = model(input_ids=windows.to(device), use_cache=False).logits
        finally:
            for h in handles:
                h.remove()
        self.dense_log_probs = F.log_softmax(dense.float(), -1)
        self.passes = 1

    def log_probs_from(self, i: int) -> torch.Tensor:
        args, kwargs = self.inputs[i]
        with torch.inference_mode():
            for block in self.blocks[i:]:
                out = block(*args, **kwargs)
                hidden = out[0] if isinstance(out, tuple) else out
                args, kwargs = ((hidden,) + tuple(args[1:]), kwargs) if args else (args, {**kwargs,
                                                                                          "hidden_states": hidden})
            hidden = args[0] if args else kwargs["hidden_states"]
            self.passes += 1
            return F.log_softmax(self.head(self.norm(hidden)).float(), -1)

    def kl_from(self, i: int) -> float:
        """Mean per-token ``KL(dense || model)`` when blocks ``i..`` run with the model's current modules."""
        lp = self.log_probs_from(i)
        dense = self.dense_log_probs
        return float((dense.exp() * (dense - lp)).sum(-1).mean())


def table_key(compressor, method, statistics_key, windows: torch.Tensor, grid=None, step: int | None = None) -> str:
    """The table's cache key: what every entry depends on. ``grid`` and ``step`` give the key of the older layout,
    one table per grid and step (read for what the new one lacks)."""
    from lord.cache import content_key, tensor_hash

    parts = [compressor.cache.model_key if compressor.cache else None, statistics_key, method.basis_key(),
             type(method).__name__, tensor_hash(windows)]
    if grid is not None:
        parts += [list(grid), step]
    parts.append([t.name for t in compressor.targets])
    n = compressor.neurons
    if n is not None:  # the MLP blocks of neuron selection, their statistics and settings
        parts.append(["neurons", n.settings.ridge, n.settings.refit_ridge, n.statistics_keys(),
                      [b.name for b in n.blocks]])
    return content_key(*parts)


def _entries(stored: dict | None) -> dict[str, dict[int, float]]:
    stored_table = (stored or {}).get("table") or {}
    return {name: {int(r): kl for r, kl in costs.items()} for name, costs in stored_table.items()}


def _cost(stored: dict | None) -> dict:
    return dict((stored or {}).get("cost") or {"forward_passes": 0, "seconds": 0.0})


def _write(table_file: Path, table: dict[str, dict[int, float]], cost: dict) -> None:
    write_json_atomic(table_file, {"table": {n: {str(r): kl for r, kl in sorted(v.items())} for n, v in table.items()},
                                   "cost": cost})


def measure_sensitivities(compressor, method, candidates, windows: torch.Tensor, grid, step: int,
                          table_file: Path | None = None, progress: bool = True,
                          older_files: tuple[Path, ...] = ()) -> tuple[dict, dict]:
    """({target: {rank: KL}} for every candidate's rank options on ``grid``, a record of the cost), measuring only
    the options ``table_file`` lacks and adding them to it. Tables of the older layout (``older_files``, one per
    grid and step) fill in what ``table_file`` lacks before anything is measured, and are kept in it; the cost
    then counts every table that gave entries."""
    stored = read_json(table_file) if table_file is not None else None
    table, before = _entries(stored), _cost(stored)
    wanted = {c.name: rank_options(c, grid, step)[1:] for c in candidates}

    def lacking() -> dict[str, list[int]]:
        return {c.name: [r for r in wanted[c.name] if r not in table.get(c.name, {})] for c in candidates}
    missing, merged = lacking(), False
    for older in older_files if any(missing.values()) else ():
        old = read_json(older)
        gave = False
        for name, costs in _entries(old).items():
            mine = table.setdefault(name, {})
            for r, kl in costs.items():
                gave |= r not in mine
                mine.setdefault(r, kl)
        if gave:
            before = {k: before[k] + _cost(old)[k] for k in ("forward_passes", "seconds")}
            merged = True
    if merged:
        missing = lacking()
        if table_file is not None:  # the older layout's entries become this layout's
            _write(table_file, table, before)
    todo = [c for c in candidates if missing[c.name]]
    record = {"targets": len(candidates), "from_cache": len(candidates) - len(todo), "windows": int(windows.shape[0]),
              "seq_len": int(windows.shape[1]), "grid": list(grid),
              "options": sum(map(len, wanted.values())), "options_measured": sum(map(len, missing.values()))}

    def offered():
        return {name: {r: table[name][r] for r in ranks} for name, ranks in wanted.items()}
    if not todo:
        return offered(), {**record, "forward_passes": 0, "seconds": 0.0, "total": before}
    t0 = time.perf_counter()
    model = compressor.model
    arch = architecture_for(model, compressor.architecture)
    runner = BlockRunner(model, windows, arch.blocks)
    stats = compressor.statistics_for(method)
    shapes = {t.name: (t, d) for t, d in compressor._shapes(method)}
    neuron_blocks = compressor.neurons.by_name if compressor.neurons is not None else {}
    for c in progress_bar(todo, desc="sensitivities", unit="matrix", disable=not progress):
        if c.name in neuron_blocks:  # an MLP block keeping r neurons (lord.neuron_selection)
            block = neuron_blocks[c.name].block
            swap = lambda r, name=c.name: compressor.swap_in_neurons({name: r})  # noqa: E731
        else:
            target, shape = shapes[c.name]
            if target.block is None:
                raise LordError(f"allocation 'measured' measures block layers; {c.name} is not in a block")
            block, basis = target.block, compressor.basis(method, target, stats)
            swap = lambda r, t=target, d=shape, b=basis: compressor.swap_in(  # noqa: E731
                method, [(t, replace(d, rank=r))], {t.name: b})
        costs = table.setdefault(c.name, {})
        for r in missing[c.name]:
            swap(r)
            try:
                costs[r] = runner.kl_from(block)
            finally:
                compressor.restore()
        if table_file is not None:
            spent = time.perf_counter() - t0
            _write(table_file, table, {"forward_passes": before["forward_passes"] + runner.passes,
                                       "seconds": before["seconds"] + spent})
    spent = time.perf_counter() - t0
    total = {"forward_passes": before["forward_passes"] + runner.passes, "seconds": before["seconds"] + spent}
    log.info("measured %d options of %d matrices in %.0f s (%d forward passes)", record["options_measured"],
             len(todo), spent, runner.passes)
    return offered(), {**record, "forward_passes": runner.passes, "seconds": spent, "total": total}

"""The settings that stages ``refit`` and ``anchor`` share (``lord.refit`` fits both): each read from the run config
and checked with one line for a bad value, and the tag that names a result whose settings are not the defaults."""

from __future__ import annotations

import logging

from lord.errors import LordError, check_skip_first
from lord.stages.base import Stage

DEFAULT_RIDGE = 1e-6  # refit's single ridge (refit.ridge)

log = logging.getLogger(__name__)


def fit_settings(cfg, key: str, default_ridges, default_holdout) -> tuple[list[float], float]:
    """(ridges, holdout) of stage ``key`` (``anchor``, ``refit``), checked: one line for a bad value."""
    node = cfg.get(key) or {}
    ridges = node.get("ridges", default_ridges)
    ridges = list(ridges) if ridges is not None else None
    holdout = node.get("holdout", default_holdout)
    if ridges is not None and (not ridges or not all(isinstance(r, (int, float)) and not isinstance(r, bool)
                                                        and r >= 0 for r in ridges)):
        raise LordError(f"{key}.ridges={ridges!r} must be a non-empty list of numbers >= 0 (ridges relative to the "
                        "mean eigenvalue of the inputs' covariance), e.g. [1e-4,1e-2]")
    if isinstance(holdout, bool) or not isinstance(holdout, (int, float)) or not 0 <= holdout < 1:
        raise LordError(f"{key}.holdout={holdout!r} must be a share of the calibration batches in [0, 1)")
    if ridges is not None and len(ridges) > 1 and holdout == 0:
        raise LordError(f"{key}.ridges lists {len(ridges)} ridges but {key}.holdout=0 leaves no batch to choose "
                        f"among them; set {key}.holdout (e.g. 0.25) or give one ridge")
    return ridges, holdout


FIT_KEYS = {"anchor": ("ridges", "holdout", "skip_first", "order", "metric", "keep_better", "prior"),
            "refit": ("ridge", "ridges", "holdout", "skip_first", "order")}


def check_fit_keys(cfg, key: str) -> None:
    """One line for a key of ``anchor``/``refit`` that the stage does not read (a typo would be ignored silently)."""
    unknown = sorted(set(cfg.get(key) or {}) - set(FIT_KEYS[key]))
    if unknown:
        raise LordError(f"{key} has unknown key(s) {unknown}; allowed: {', '.join(FIT_KEYS[key])}")


def skip_setting(cfg, key: str) -> int:
    """``<key>.skip_first`` of stage ``key`` (``anchor``, ``refit``): leading window positions left out of its fit,
    checked against the calibration windows' length (one line for a bad value)."""
    skip = (cfg.get(key) or {}).get("skip_first", 0)
    c = cfg.calibration
    check_skip_first(f"{key}.skip_first", skip, c.get("seq_len") or cfg.data.get("seq_len"))
    return skip


def order_setting(cfg, key: str) -> str:
    """``<key>.order`` of stage ``key``: "block" (a block's targets fitted together, the default) or "sublayer" (group
    by group in forward order, each on inputs from the block's refitted earlier groups; ``lord.refit``)."""
    from lord.refit import ORDERS

    order = (cfg.get(key) or {}).get("order", "block")
    if order not in ORDERS:
        raise LordError(f"{key}.order={order!r} must be one of {', '.join(ORDERS)} (block: a block's layers fitted "
                        "together; sublayer: in forward order, each on its refitted predecessors' outputs)")
    return order


def fit_tag(cfg, key: str, default_ridges, default_holdout) -> str:
    """What a result name appends to ``+<key>`` for the settings of stage ``key`` that differ from its defaults:
    ``-ridge<x>`` (refit's single ridge), ``-ridges<a>_<b>..``, ``-holdout<h>``, ``-skip<k>``, ``-sublayer``; ""
    at the defaults, so the results from before these settings keep their names."""
    node = cfg.get(key) or {}
    tag = ""
    if key == "refit" and node.get("ridge", DEFAULT_RIDGE) != DEFAULT_RIDGE:
        tag += f"-ridge{node['ridge']:g}"
    ridges = node.get("ridges", default_ridges)
    if ridges is not None and (default_ridges is None or list(ridges) != list(default_ridges)):
        tag += "-ridges" + "_".join(f"{r:g}" for r in ridges)
    if node.get("holdout", default_holdout) != default_holdout:
        tag += f"-holdout{node['holdout']:g}"
    tag += f"-skip{node['skip_first']}" if node.get("skip_first", 0) else ""
    return tag + ("-sublayer" if node.get("order", "block") == "sublayer" else "")


def check_after_decompose(stage: Stage) -> None:
    if "decompose" not in [s.name for s in stage.earlier]:
        raise LordError(f"stage {stage.name!r} refits decomposed layers: put it after 'decompose' "
                        f"(stages=[calibrate,decompose,{stage.name}])")


def check_held_out_batches(cfg, key: str, holdout: float) -> None:
    """Held-out batches need at least one batch on each side (from the config alone)."""
    if not holdout:
        return
    c = cfg.calibration
    n = -(-int(c.n_windows) // int(c.batch_size))  # batches
    held = round(holdout * n)
    if held < 1 or held >= n:
        raise LordError(f"{key}.holdout={holdout} of {n} calibration batches (calibration.n_windows="
                        f"{c.n_windows}, calibration.batch_size={c.batch_size}) leaves {held} held out and "
                        f"{n - held} to fit on; each side needs at least one batch")


def nothing_to_fit(ctx, key: str) -> dict | None:
    """The record of stage ``key`` when the run decomposed no layer (every selected layer kept dense by the
    allocation, or an MLP of neuron selection, whose ``down_proj`` is already refitted on its kept neurons): a
    warning and a record saying why the stage did nothing, so the result does not read as if it had fitted. None when
    there are decompositions to fit."""
    if ctx.decompositions:
        return None
    why = "no layer was decomposed (neuron selection or the allocation left no low-rank layer), so nothing to fit"
    log.warning("stage %s: %s", key, why)
    return {"skipped": why, "targets": []}

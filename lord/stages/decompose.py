"""``decompose`` (config groups ``method``, ``rank``): replace every selected layer by its low-rank factors,
using the targets, statistics and bases of the ``calibrate`` stage before it."""

from __future__ import annotations

import logging
import time

from omegaconf import OmegaConf

from lord.errors import LordError
from lord.methods import get_method
from lord.ranks import RankSpec
from lord.stages.base import STAGES, Stage

log = logging.getLogger(__name__)


def rank_spec(cfg) -> RankSpec:
    r = cfg.rank
    try:
        return RankSpec(unit=r.unit, value=r.value, round_to=int(r.round_to), force=bool(r.force),
                        allocation=str(r.get("allocation", "uniform")))
    except LordError as e:
        raise LordError(f"rank: {e}") from None


@STAGES.register("decompose")
class Decompose(Stage):
    def __init__(self, cfg):
        super().__init__(cfg)
        self.method = get_method(OmegaConf.to_container(cfg.method, resolve=True))
        self.rank = rank_spec(cfg) if self.method.decomposes else None

    def needs_calibration_data(self) -> bool:
        return self.method.decomposes and (self.method.needs_statistics or self.neurons is not None)

    @property
    def neurons(self):
        """Neuron selection of the MLP blocks (``NeuronSettings``), or None."""
        from lord.stages.calibrate import neuron_settings

        return neuron_settings(self.cfg)

    def check_config(self) -> None:
        if self.neurons is None:
            return
        if not self.method.decomposes:
            raise LordError("neurons.enabled=true selects MLP neurons and decomposes the other selected layers with "
                            "the method: choose a decomposing method (e.g. method=whiten), not dense")
        if self.rank.unit != "budget":
            raise LordError(f"neurons.enabled=true allocates the neurons each MLP block keeps under a parameter "
                            f"budget; set rank.unit=budget (rank.unit={self.rank.unit} is per matrix)")

    def uses_layer_selection(self) -> bool:
        return self.method.decomposes

    def check(self, model) -> None:
        if not self.method.decomposes:
            return
        if not any(s.name == "calibrate" for s in self.earlier):
            raise LordError("stage 'decompose' needs 'calibrate' before it (it selects the layers); "
                            "set stages=[calibrate,decompose]")
        from lord.compress import Compressor, check_sequential
        from lord.stages.calibrate import layer_selection

        if self.cfg.calibration.mode == "sequential":
            check_sequential(self.method, self.rank)
        compressor = Compressor(model, **layer_selection(self.cfg), progress=False)
        self.method.check_targets(model, compressor.targets)
        if self.rank.unit == "budget":
            compressor.check_budget(self.method, self.rank)
            grid = None
            if needs_measurement(self.rank.allocation):
                grid = sensitivity_settings(self.cfg)["grid"]
            elif self.rank.allocation == "loss_estimate":
                from lord.allocation.knapsack import LOSS_ESTIMATE_GRID as grid
            if grid is not None:
                compressor.check_budget(self.method, self.rank, grid=grid)
        else:
            compressor.plan(self.method, self.rank)

    def apply(self, ctx) -> dict | None:
        if not self.method.decomposes:
            return None
        c = ctx.compressor
        t = time.perf_counter()
        if self.rank.unit == "budget" and needs_measurement(self.rank.allocation):
            s = sensitivity_settings(self.cfg)
            c.sensitivity = {"windows": ctx.data.held_out_calibration(s["windows"], s["seq_len"]), "grid": s["grid"]}
        report = c.apply(self.method, self.rank, self.cfg.calibration.mode)
        decs = report["decompositions"]
        ctx.decompositions += decs
        log.info("decomposed %d targets with %s in %.1f s", len(decs), self.method.name, time.perf_counter() - t)
        if c.events.get("neurons"):  # neuron selection: per MLP block the neurons kept, the cost, the seconds
            log.info("neuron selection: %d of %d MLP neurons kept", c.events["neurons"]["neurons_kept"],
                     c.events["neurons"]["neurons_dense"])
        record = {
            "method": self.method.name, "kinds": list(self.cfg.layers.kinds), "group": bool(self.cfg.layers.group),
            "calibration": self.cfg.calibration.mode, "rank_spec": OmegaConf.to_container(self.cfg.rank),
            "n_targets": len(decs), "ranks": sorted({d.rank for d in decs}),
            "target_dense_params": report["dense_params"], "target_lowrank_params": report["lowrank_params"],
            "decompositions": [{"name": d.name, "kind": d.kind, "rank": d.rank, "d_in": d.d_in, "d_outs": d.d_outs}
                               for d in decs],
            "reused": {k: v for k, v in c.events.items() if k.endswith("_from_cache")},  # from the disk cache
            # fewer calibration tokens than a statistic's dimension + 1 (lord.compress.Compressor._check_rank)
            "rank_deficient_statistics": c.events.get("rank_deficient_statistics"),
        }
        if self.rank.unit == "budget":  # the criterion, the share of the selection's parameters removed, dense targets
            record["allocation"] = c.events.get("allocation")
            if c.events.get("sensitivity"):  # what measuring the sensitivity table cost
                record["allocation"]["sensitivity"] = c.events["sensitivity"]
        if c.neurons is not None:
            record["neurons"] = {**c.events["neurons"], "resized": report["resized"]}
            # smaller MLPs change the model even when the allocation left every low-rank target dense: the
            # evaluation must not reuse the dense baseline (RunContext.changed)
            record["changed"] = bool(decs) or bool(report["resized"])
        return record


def needs_measurement(allocation: str) -> bool:
    from lord.allocation import ALLOCATORS

    return bool(getattr(ALLOCATORS.get(allocation), "needs_measurement", False))


def sensitivity_settings(cfg) -> dict:
    """``sensitivity`` (allocation 'measured': lord.sensitivity), checked in one line."""
    from lord.identity import ADDED_KEYS

    s = {**ADDED_KEYS["sensitivity"], **dict(cfg.get("sensitivity") or {})}
    for key in ("windows", "seq_len"):
        v = s[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < (2 if key == "seq_len" else 1):
            raise LordError(f"sensitivity.{key}={v!r} must be an integer >= {2 if key == 'seq_len' else 1}")
    grid = list(s["grid"])
    if not grid or not all(isinstance(f, (int, float)) and not isinstance(f, bool) and 0 < f < 100 for f in grid):
        raise LordError(f"sensitivity.grid={grid!r} must be a non-empty list of % of a matrix's parameters removed, "
                        "each in (0, 100), e.g. [10,30,50]")
    return {**s, "grid": sorted(grid)}


def planned_decompositions(earlier, cfg, model) -> list | None:
    """The decompositions (shapes and ranks) that a ``decompose`` stage among ``earlier`` will make, from the
    config and a weightless model; [] without one, None when its ranks need the bases (``rank.unit=budget``)."""
    stage = next((s for s in earlier if s.name == "decompose" and s.method.decomposes), None)
    if stage is None:
        return []
    if stage.rank.unit == "budget":
        return None
    from lord.compress import Compressor
    from lord.stages.calibrate import layer_selection

    compressor = Compressor(model, **layer_selection(cfg), progress=False)
    return [p.decomposition for p in compressor.plan(stage.method, stage.rank)]

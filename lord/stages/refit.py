"""``refit`` (key ``refit.ridge``, default 1e-6; set it in a preset or with ``+refit.ridge=``; ``refit.ridges`` and
``refit.holdout`` choose it per layer on held-out calibration batches, as stage ``anchor`` does): after
``decompose``, refit every decomposed layer's ``B`` and bias on the compressed model's own inputs, ``A`` fixed
(``lord.refit``). Run it as ``stages=[calibrate,decompose,refit]``; it reads the calibration windows again and
keeps the hidden states of both the dense and the compressed model (two forward passes, and one more of the
compressed blocks). ``refit.skip_first=k`` leaves the first ``k`` positions of every window out of the fit (the
attention-sink diagnosis of docs/findings/beyond-the-paper.md); every layer's record has the first position's
share of the residual before the fit either way. ``refit.order=sublayer`` refits a block's layers group by group in
forward order (q/k/v, then o, then gate/up, then down), each on the inputs from its refitted predecessors, where the
default ``block`` fits them together on inputs from before the block's refit."""

from __future__ import annotations

import logging
import time

from lord.errors import LordError
from lord.stages.base import STAGES, Stage
from lord.stages.fit_options import (DEFAULT_RIDGE, check_after_decompose, check_fit_keys, check_held_out_batches,
                                     fit_settings, fit_tag, nothing_to_fit, order_setting, skip_setting)

log = logging.getLogger(__name__)


def ridge_setting(cfg) -> float:
    return (cfg.get("refit") or {}).get("ridge", DEFAULT_RIDGE)


@STAGES.register("refit")
class Refit(Stage):
    @classmethod
    def tag(cls, cfg) -> str:
        return fit_tag(cfg, "refit", None, 0.0)

    def needs_calibration_data(self) -> bool:
        return True

    def check_config(self) -> None:
        check_fit_keys(self.cfg, "refit")
        ridge = ridge_setting(self.cfg)
        if isinstance(ridge, bool) or not isinstance(ridge, (int, float)) or ridge < 0:
            raise LordError(f"refit.ridge={ridge!r} must be a number >= 0 (a ridge term relative to the mean "
                            "eigenvalue of E[z z^T])")
        check_after_decompose(self)
        _, holdout = fit_settings(self.cfg, "refit", None, 0.0)
        check_held_out_batches(self.cfg, "refit", holdout)
        skip_setting(self.cfg, "refit")
        order_setting(self.cfg, "refit")

    def apply(self, ctx) -> dict | None:
        from lord.refit import refit

        skipped = nothing_to_fit(ctx, "refit")
        if skipped is not None:
            return skipped
        c = self.cfg.calibration
        batches = list(ctx.data.windows("calibration").split(c.batch_size))
        t = time.perf_counter()
        ridges, holdout = fit_settings(self.cfg, "refit", None, 0.0)
        record = refit(ctx.model, ctx.compressor, ctx.decompositions, batches, ridge_setting(self.cfg),
                       holdout=holdout, ridges=ridges, skip_first=skip_setting(self.cfg, "refit"),
                       order=order_setting(self.cfg, "refit"))
        layers = record["targets"]
        worse = [r["name"] for r in layers if r["ridge_objective_after"] > r["ridge_objective_before"] * (1 + 1e-9)]
        if worse:  # the maths says it cannot happen; say so loudly if float arithmetic ever makes it
            log.warning("refit increased its objective on %d layers: %s", len(worse), ", ".join(worse[:5]))
        gain = [r["objective_after"] / r["objective_before"] for r in layers if r["objective_before"] > 0]
        log.info("refitted %d layers in %.1f s; objective after/before: median %.3f", len(layers),
                 time.perf_counter() - t, sorted(gain)[len(gain) // 2] if gain else float("nan"))
        return {**record, "seconds": time.perf_counter() - t}

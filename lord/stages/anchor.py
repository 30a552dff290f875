"""``anchor`` (keys ``anchor.ridges``, ``anchor.holdout``): after ``decompose``, refit every decomposed layer's whole
rank-r map -- both factors and the bias -- so that, on the compressed model's own inputs, it best reproduces the
dense layer on the dense inputs (AA-SVD / SAES-SVD style; ``lord.refit`` with ``fit="both"``). Block by block, so
each block corrects for the error of the compressed blocks before it; the ranks stay those of ``decompose``.

The ridge of each layer is chosen from ``anchor.ridges`` (relative to the mean eigenvalue of the inputs'
covariance) on held-out calibration batches (``anchor.holdout``, their share), then the layer is fitted on all
of them: a full-rank least-squares map of a 4,864-wide input on ~16k tokens could otherwise fit noise. (That is not
why ``refit`` made budgets of 30-40 % worse: its cause was the order of the fits, ``refit.order``;
docs/findings/beyond-the-paper.md.) Run it as
``stages=[calibrate,decompose,anchor]``. ``anchor.skip_first=k`` leaves the first ``k`` positions of every
window out of the fit (as ``refit.skip_first``); ``anchor.order=sublayer`` fits a block's layers in forward order
(as ``refit.order``).

``anchor.metric``: ``euclidean`` (the default: the output error unweighted) or ``loss`` (weighed by the decomposing
method's output metric: ``kfac``'s damped ``G``, so the fit keeps the loss-aware directions ``kfac`` chose; only
after ``method=kfac``). ``anchor.keep_better=true``: a layer whose fit is worse on the held-out batches than its
decomposition keeps the decomposition. ``anchor.prior=decomposition``: the ridge shrinks each layer towards its
decomposition instead of towards zero, so the largest ridges of ``anchor.ridges`` approach the decomposition.
"""

from __future__ import annotations

import logging
import time

from lord.errors import LordError
from lord.stages.base import STAGES, Stage
from lord.stages.fit_options import (check_after_decompose, check_fit_keys, check_held_out_batches, fit_settings,
                                     fit_tag, nothing_to_fit, order_setting, skip_setting)

log = logging.getLogger(__name__)

DEFAULT_RIDGES = (1e-6, 1e-4, 1e-3, 1e-2, 1e-1)
DEFAULT_HOLDOUT = 0.25
METRICS = ("euclidean", "loss")


def _choice(cfg, key: str, allowed, meaning: str) -> str:
    """``anchor.<key>`` (default: the first of ``allowed``), checked: one line for a value not in ``allowed``."""
    value = (cfg.get("anchor") or {}).get(key, allowed[0])
    if value not in allowed:
        raise LordError(f"anchor.{key}={value!r} must be one of {', '.join(allowed)} ({meaning})")
    return value


def metric_setting(cfg) -> str:
    """``anchor.metric``: ``euclidean`` (the default) or ``loss``."""
    return _choice(cfg, "metric", METRICS, "euclidean: output errors unweighted; loss: weighed by kfac's output "
                   "metric G")


def prior_setting(cfg) -> str:
    """``anchor.prior``: ``zero`` (the default) or ``decomposition``."""
    from lord.refit import PRIORS

    return _choice(cfg, "prior", PRIORS, "what the ridge shrinks each layer's map towards")


def keep_setting(cfg) -> bool:
    """``anchor.keep_better``, checked: a boolean."""
    keep = (cfg.get("anchor") or {}).get("keep_better", False)
    if not isinstance(keep, bool):
        raise LordError(f"anchor.keep_better={keep!r} must be true or false")
    return keep


@STAGES.register("anchor")
class Anchor(Stage):
    @classmethod
    def tag(cls, cfg) -> str:
        node = cfg.get("anchor") or {}
        return (fit_tag(cfg, "anchor", DEFAULT_RIDGES, DEFAULT_HOLDOUT)
                + ("-loss" if node.get("metric", "euclidean") == "loss" else "")
                + ("-keep" if node.get("keep_better", False) else "")
                + ("-prior" if node.get("prior", "zero") == "decomposition" else ""))

    def needs_calibration_data(self) -> bool:
        return True

    def check_config(self) -> None:
        check_fit_keys(self.cfg, "anchor")
        _, holdout = fit_settings(self.cfg, "anchor", DEFAULT_RIDGES, DEFAULT_HOLDOUT)
        check_after_decompose(self)
        check_held_out_batches(self.cfg, "anchor", holdout)
        skip_setting(self.cfg, "anchor")
        order_setting(self.cfg, "anchor")
        prior_setting(self.cfg)
        if keep_setting(self.cfg) and holdout == 0:
            raise LordError("anchor.keep_better=true compares each fit with its decomposition on held-out batches; "
                            "set anchor.holdout > 0 (e.g. 0.25)")
        if metric_setting(self.cfg) == "loss" and self._method().statistic != "curvature":
            raise LordError(f"anchor.metric=loss weighs outputs by kfac's G, but method={self._method().name} has "
                            "no output metric; use method=kfac or anchor.metric=euclidean")

    def _method(self):
        return next(s for s in self.earlier if s.name == "decompose").method

    def _metric_for(self, ctx):
        """The decomposition -> output metric map of ``anchor.metric=loss`` (None for ``euclidean``)."""
        if metric_setting(self.cfg) != "loss":
            return None
        from lord.curvature import curvature_for

        method, compressor = self._method(), ctx.compressor
        stats = compressor.curvature(method.output_form)
        targets = {t.name: t for t in compressor.targets}
        return lambda d: method.output_metric(curvature_for(stats, targets[d.name], method.output_form))

    def apply(self, ctx) -> dict | None:
        from lord.refit import refit

        skipped = nothing_to_fit(ctx, "anchor")
        if skipped is not None:
            return skipped
        ridges, holdout = fit_settings(self.cfg, "anchor", DEFAULT_RIDGES, DEFAULT_HOLDOUT)
        batches = list(ctx.data.windows("calibration").split(self.cfg.calibration.batch_size))
        t = time.perf_counter()
        record = refit(ctx.model, ctx.compressor, ctx.decompositions, batches, ridge=ridges[0], fit="both",
                       holdout=holdout, ridges=ridges, skip_first=skip_setting(self.cfg, "anchor"),
                       order=order_setting(self.cfg, "anchor"), metric_for=self._metric_for(ctx),
                       keep_better=keep_setting(self.cfg), prior=prior_setting(self.cfg))
        layers = record["targets"]
        worse = [r["name"] for r in layers if r.get("held_out_after", 0) > r.get("held_out_before", 0)]
        kept = [r["name"] for r in layers if r.get("kept")]
        log.info("anchored fit of %d layers in %.1f s; held-out objective worse than the decomposition's on %d%s",
                 len(layers), time.perf_counter() - t, len(worse),
                 f" (kept their decomposition: {len(kept)})" if keep_setting(self.cfg) else "")
        return {**record, "held_out_worse": worse, "seconds": time.perf_counter() - t,
                **({"kept": kept} if keep_setting(self.cfg) else {})}

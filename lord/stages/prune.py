"""``prune`` (keys ``prune.sparsity``, default 0.5, and ``prune.pattern``: ``unstructured`` or ``N:M`` such as
``2:4``; set them in a preset or with ``+prune.sparsity=``): Wanda pruning of every linear in the blocks
(``lord.pruning``), on the calibration windows. After ``decompose`` it prunes the LoRD factors
(``stages=[calibrate,decompose,prune]``); with ``method=dense`` the dense model's projections."""

from __future__ import annotations

import logging
import time

from lord.errors import LordError
from lord.stages.base import STAGES, Stage

log = logging.getLogger(__name__)


def prune_spec(cfg):
    from lord.pruning import PruneSpec

    p = cfg.get("prune") or {}
    unknown = sorted(set(p) - {"sparsity", "pattern"})
    if unknown:
        raise LordError(f"prune has unknown key(s) {unknown}; allowed: sparsity, pattern")
    spec = PruneSpec(sparsity=p.get("sparsity", 0.5), pattern=str(p.get("pattern", "unstructured")))
    spec.check()
    return spec


@STAGES.register("prune")
class Prune(Stage):
    @classmethod
    def tag(cls, cfg) -> str:
        p = cfg.get("prune") or {}
        pattern = str(p.get("pattern", "unstructured"))
        return f"{100 * p.get('sparsity', 0.5):g}" if pattern == "unstructured" else pattern.replace(":", "of")

    def needs_calibration_data(self) -> bool:
        return True

    def check_config(self) -> None:
        prune_spec(self.cfg)
        if any(s.name == "quantize" for s in self.earlier):
            raise LordError("stage 'prune' must come before 'quantize' (it scores float weights); "
                            "set stages=[calibrate,decompose,prune,quantize]")

    def check(self, model) -> None:
        """N:M needs every pruned layer's input count to be a multiple of M: the dense layers' (from the config),
        and the ranks a decompose stage before it gives (the inputs of the factors ``B``)."""
        spec = prune_spec(self.cfg)
        if spec.n_m is None:
            return
        from lord.architectures import architecture_for, block_linears
        from lord.stages.calibrate import architecture
        from lord.stages.decompose import planned_decompositions

        m = spec.n_m[1]
        arch = architecture_for(model, architecture(self.cfg))
        for i, block in enumerate(model.get_submodule(arch.blocks)):
            for name, mod in block_linears(block).items():
                if mod.in_features % m:
                    raise LordError(f"prune.pattern={spec.pattern}: block {i}'s {name} has {mod.in_features} inputs, "
                                    f"not a multiple of {m}; use prune.pattern=unstructured for this model")
        bad = sorted({d.rank for d in planned_decompositions(self.earlier, self.cfg, model) or [] if d.rank % m})
        if bad:  # a budget's ranks (None) need the bases: pruning checks them when it runs
            raise LordError(f"prune.pattern={spec.pattern}: the decomposition's rank(s) {bad} are the inputs of the "
                            f"factors B and not multiples of {m}; set rank.round_to={m}")

    def apply(self, ctx) -> dict:
        from lord.pruning import nonzero_parameters, prune_model
        from lord.stages.calibrate import architecture

        spec = prune_spec(self.cfg)
        batches = list(ctx.data.windows("calibration").split(self.cfg.calibration.batch_size))
        t = time.perf_counter()
        record = prune_model(ctx.model, batches, spec, architecture(self.cfg))
        log.info("pruned %d linears (%s) to %.1f %% zeros in %.1f s", len(record["layers"]), spec.pattern,
                 100 * record["achieved_sparsity"], time.perf_counter() - t)
        return {"changed": True, **record, "nonzero_params": nonzero_parameters(ctx.model),
                "seconds": time.perf_counter() - t}

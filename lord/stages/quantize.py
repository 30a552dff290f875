"""``quantize`` (keys ``quantize.bits``, default 4, and ``quantize.group_size``, default 64; set them in a preset or
with ``+quantize.bits=``): HQQ weight-only quantization of every linear in the blocks (``lord.quantization``).
Last among the stages: after ``decompose`` it quantizes the LoRD factors
(``stages=[calibrate,decompose,quantize]``); with ``method=dense`` the dense model's projections. Records the
block linears' bytes before and after, and the whole model's bytes in memory and on disk. With ``paths.save_dir``
the quantized model is saved as a LoRD checkpoint holding the packed weights (``lord.checkpoint``)."""

from __future__ import annotations

import importlib.util
import logging
import time

from lord.errors import LordError
from lord.stages.base import STAGES, Stage

log = logging.getLogger(__name__)


def quant_settings(cfg) -> tuple[int, int]:
    from lord.quantization import check_settings

    q = cfg.get("quantize") or {}
    unknown = sorted(set(q) - {"bits", "group_size"})
    if unknown:
        raise LordError(f"quantize has unknown key(s) {unknown}; allowed: bits, group_size")
    bits, group_size = q.get("bits", 4), q.get("group_size", 64)
    check_settings(bits, group_size)
    return bits, group_size


@STAGES.register("quantize")
class Quantize(Stage):
    @classmethod
    def tag(cls, cfg) -> str:
        return f"{(cfg.get('quantize') or {}).get('bits', 4)}bit"

    def check_config(self) -> None:
        quant_settings(self.cfg)
        if self.later:
            after = [s.name for s in self.later]
            raise LordError(f"stage 'quantize' must be the last stage (the ones after it, {after}, change float "
                            "weights); move it to the end of stages=[...]")
        if importlib.util.find_spec("hqq") is None:
            raise LordError("stage 'quantize' needs the hqq package: pip install -r requirements-extras.txt")

    def check(self, model) -> None:
        from lord.quantization import check_divisible
        from lord.stages.calibrate import architecture
        from lord.stages.decompose import planned_decompositions

        group_size = quant_settings(self.cfg)[1]
        planned = planned_decompositions(self.earlier, self.cfg, model)
        if planned is None:  # a budget's ranks need the bases: quantize_model checks the factors when it runs
            return
        replaced = {m for d in planned for m in d.members}
        check_divisible(model, group_size, architecture(self.cfg), skip=replaced)  # the layers that stay dense
        for d in planned:  # and the factors A and B
            bad = [n for n in (d.rank * d.d_in, *(o * d.rank for o in d.d_outs)) if n % group_size]
            if bad:
                raise LordError(f"quantize.group_size={group_size}: {d.name}'s factors at rank {d.rank} have "
                                f"{bad[0]} weights, not a whole number of groups; choose a group size that divides "
                                "it, or set rank.round_to so that rank x inputs and outputs x rank divide by it")

    def apply(self, ctx) -> dict:
        from lord.quantization import quantize_model, serialized_bytes, tensor_bytes
        from lord.stages.calibrate import architecture

        bits, group_size = quant_settings(self.cfg)
        before = tensor_bytes(ctx.model)
        t = time.perf_counter()
        record = quantize_model(ctx.model, bits, group_size, architecture(self.cfg))
        seconds = time.perf_counter() - t
        errs = sorted(r["relative_error"] for r in record["layers"])
        log.info("quantized %d linears to %d bits (groups of %d) in %.1f s; median relative weight error %.4f",
                 len(errs), bits, group_size, seconds, errs[len(errs) // 2] if errs else float("nan"))
        return {"changed": True, **record, "model_bytes_before": before, "model_bytes": tensor_bytes(ctx.model),
                "model_bytes_on_disk": serialized_bytes(ctx.model), "seconds": seconds}

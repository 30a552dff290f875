"""``quant_noise`` (keys ``quant_noise.scale``, ``quant_noise.seed``; defaults 1 and 0): add to every weight of a
zoo model uniform noise of ``±scale·Δ/2``, ``Δ`` the quantization step of its GGUF block (``lord.quant_steps``).

A proxy for the diagnosis's 4-bit hypothesis: the unquantized weights are out of reach, but rounding to a step
``Δ`` leaves an error of about ``U(−Δ/2, Δ/2)`` per weight, so ``scale=1`` adds about as much quantization-like
noise again. Run it before ``calibrate`` (``stages=[quant_noise,calibrate,decompose]``) so that statistics and
bases are those of the noisy model; they are cached under the noisy model's own key. The run's dense perplexity
stays the clean model's: compare a compression of the noisy model with the noisy model alone (``method=dense``).
"""

from __future__ import annotations

import torch

from lord import zoo
from lord.cache import CompressionCache
from lord.errors import LordError
from lord.stages.base import STAGES, Stage


def noise_settings(cfg) -> tuple[float, int]:
    q = cfg.get("quant_noise") or {}
    return q.get("scale", 1.0), q.get("seed", 0)


@STAGES.register("quant_noise")
class QuantNoise(Stage):
    @classmethod
    def tag(cls, cfg) -> str:
        """``+quant_noise`` at the defaults (scale 1, seed 0), else ``+quant_noise-x<scale>-seed<seed>``."""
        scale, seed = noise_settings(cfg)
        return (f"-x{scale:g}" if scale != 1.0 else "") + (f"-seed{seed}" if seed else "")

    def check_config(self) -> None:
        scale, seed = noise_settings(self.cfg)
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale < 0:
            raise LordError(f"quant_noise.scale={scale!r} must be a number >= 0 (noise of ±scale·Δ/2 per weight)")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise LordError(f"quant_noise.seed={seed!r} must be an integer")
        if any(s.name == "calibrate" for s in self.earlier):
            raise LordError("stage 'quant_noise' must come before 'calibrate' (statistics of the noisy model); "
                            "set stages=[quant_noise,calibrate,decompose]")
        if self.cfg.model.name not in zoo.ZOO:
            raise LordError(f"stage 'quant_noise' needs the GGUF a model was converted from: model.name="
                            f"{self.cfg.model.name!r} is not an offline zoo model ({', '.join(zoo.ZOO)})")

    def apply(self, ctx) -> dict:
        from lord.quant_steps import gguf_steps

        scale, seed = noise_settings(self.cfg)
        steps = gguf_steps(zoo.fetch_gguf(self.cfg.model.name, self.cfg.paths.cache_dir), ctx.model)
        params = dict(ctx.model.named_parameters(remove_duplicate=False))
        gen = torch.Generator().manual_seed(seed)
        done, noise_sq, weight_sq, n = set(), 0.0, 0.0, 0
        with torch.no_grad():
            for name in sorted(steps):
                p = params[name]
                if p.data_ptr() in done:  # a tied weight gets its noise once
                    continue
                done.add(p.data_ptr())
                noise = (torch.rand(p.shape, generator=gen, dtype=torch.float32) - 0.5) * (scale * steps[name])
                weight_sq += float(p.detach().float().square().sum())
                p.add_(noise.to(device=p.device, dtype=p.dtype))
                noise_sq, n = noise_sq + float(noise.square().sum()), n + p.numel()
        ctx.cache = CompressionCache(ctx.cache.root, f"{ctx.cache.model_key}|quant_noise:{scale}:{seed}")
        return {"changed": True, "scale": scale, "seed": seed, "tensors": len(done), "weights": n,
                "relative_rms": (noise_sq / weight_sq) ** 0.5 if weight_sq else None}

"""``asvd``: activation-aware SVD (Yuan et al., 2023, "ASVD"): the truncated SVD of ``W S``.

``S = diag(s)``, ``s_j = (mean_t |x_tj|)^alpha`` over the calibration tokens, so input channels that carry
large activations weigh more. ASVD keeps ``U_r Sigma_r V_r^T S^-1``; since ``U_r Sigma_r V_r^T = U_r U_r^T W S``,
that is the projection ``U_r U_r^T W`` -- a basis like every other method here (no inverse of ``S`` is formed,
so channels that never fire need no guard). ``alpha = 0`` is plain SVD. The bias is kept.

ASVD also searches a rank per layer by its sensitivity (perplexity with that layer alone truncated); here ranks
come from ``rank`` (``unit=budget`` allocates them across layers from the spectra, ``lord.allocation``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lord.errors import LordError
from lord.methods.base import METHODS, Basis, Method, MethodConfig


@dataclass
class AsvdConfig(MethodConfig):
    alpha: float = 0.5  # the exponent of the activation scale (the paper's default)


@METHODS.register("asvd")
class Asvd(Method):
    config_class = AsvdConfig
    statistic = "channel_abs_mean"

    def __init__(self, config: AsvdConfig | None = None):
        super().__init__(config)
        a = self.config.alpha
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not 0 <= a <= 2:
            raise LordError(f"method asvd: alpha={a!r} must be a number in [0, 2] (the paper uses 0.5)")

    def basis(self, W, channels, side) -> Basis:
        if channels is None or channels.n == 0:
            raise LordError("method 'asvd' needs calibration statistics; pass calibration data")
        W = W.detach().to(torch.float64).to(channels.sum_abs.device)
        s = channels.mean().to(torch.float64) ** float(self.config.alpha)
        U, S, _ = torch.linalg.svd(W * s, full_matrices=False)
        return Basis(U, S**2, None)

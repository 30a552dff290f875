"""``lord``: the paper's method (Eq. 4-5).

Basis: eigenvectors of the *centred* output covariance; bias: ``Q_r Q_r^T b`` -- the output bias projected
onto the kept directions, so the part of the output mean outside them is lost (see ``output_errors``).
"""

from __future__ import annotations

import torch

from lord.methods.base import METHODS, Basis, Method, moment_basis


@METHODS.register("lord")
class Lord(Method):
    def basis_key(self) -> str:
        return "centred output covariance"  # shared with lord_meanfix

    def basis(self, W, moments, side) -> Basis:
        return moment_basis(W, moments, side, centred=True, method=self.name)

    def output_bias(self, basis, Qr, b):
        return None if b is None else Qr @ (Qr.T @ b)


def output_errors(basis: Basis, b: torch.Tensor | None, rank: int) -> dict[str, float]:
    """Mean squared output error per calibration vector at ``rank``, from the statistics alone (exact algebra):
    ``meanfix`` = discarded variance ``sum_{i>r} lambda_i`` (``lord_meanfix``, PCA reconstruction), and
    ``lord_extra`` = ``||(I - Q_r Q_r^T) ybar||^2``, what ``lord``'s bias rule adds by projecting the output
    mean ``ybar = W mu + b`` too (``lord``'s error is the sum of both)."""
    Qr = basis.Q[:, :rank].to(torch.float64)
    ybar = basis.mean_z.to(Qr.device, torch.float64)
    if b is not None:
        ybar = ybar + b.to(Qr.device, torch.float64)
    outside = ybar - Qr @ (Qr.T @ ybar)
    return {"meanfix": float(basis.spectrum[rank:].sum()), "lord_extra": float(outside.square().sum())}

"""Decomposition methods: each picks an orthonormal basis ``Q`` of the output space.

All four methods are projections. For a rank ``r`` with ``Q_r`` the first ``r`` columns of ``Q``:
``B = Q_r``, ``A = Q_r^T W`` (so ``W' = Q_r Q_r^T W``), and only the bias differs. A basis is
computed once and every rank is a slice of it, which is what makes rank sweeps cheap.

==============  ==============================================================  =========================
method          basis Q                                                           output bias
==============  ==============================================================  =========================
``lord``        eigenvectors of the *centred* output covariance (paper Eq. 4)     ``Q_r Q_r^T b`` (Eq. 5)
``lord_meanfix`` same as ``lord``                                                 ``b + (I - Q_r Q_r^T) W mu``
``whiten``      left singular vectors of ``W L``, ``E[x x^T] = L L^T``            ``b``
``svd``         left singular vectors of ``W`` (data-free)                        ``b``
==============  ==============================================================  =========================

Why these are what they claim (on the calibration data, outputs ``Y = W X + b``):

* ``lord_meanfix`` gives ``y' = Q_r Q_r^T (y - ybar) + ybar``: PCA reconstruction, the best rank-r
  affine approximation of the outputs in Frobenius norm (Eckart-Young on the centred outputs).
  ``lord`` has the same linear part but a different bias, so its error can only be larger.
* ``whiten`` minimises ``||(W - W') X||_F`` over rank-r ``W'`` (SVD-LLM's objective): with
  ``X X^T = n L L^T`` that is ``||(W - W') L||_F``, minimised by the truncated SVD of ``W L``,
  whose column space is that of ``U_r``; projecting, ``W' = U_r U_r^T W``.
  Equivalently it is AFM on the *uncentred*, bias-free outputs.

From the input side (``d_out >= d_in``), the eigenvectors of ``W C W^T`` with ``C = L_c L_c^T`` are
the left singular vectors of ``W L_c``, so the output covariance is never formed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lord.calibration import Moments
from lord.errors import LordError

METHODS = ("lord", "lord_meanfix", "whiten", "svd")
DATA_FREE = ("svd",)
# methods with the same entry here compute the same basis (they differ only in the output bias)
BASIS_FAMILY = {"lord": "centred output covariance", "lord_meanfix": "centred output covariance",
                "whiten": "second moment", "svd": "weights only"}


@dataclass
class Basis:
    Q: torch.Tensor  # (d_out, k), float64, orthonormal columns, most important first
    spectrum: torch.Tensor  # (k,) variance captured by each column (eigenvalues / squared singular values)
    mean_z: torch.Tensor | None  # (d_out,) mean of bias-free outputs W x on the calibration data


def _sym_sqrt_factor(C: torch.Tensor) -> torch.Tensor:
    """An ``L`` with ``L L^T = C`` for symmetric positive semi-definite ``C`` (no shift needed)."""
    vals, vecs = torch.linalg.eigh(C)
    return vecs * vals.clamp_min(0).sqrt()


def compute_basis(method: str, W: torch.Tensor, moments: Moments | None, side: str | None) -> Basis:
    """The method's basis for ``W`` (``d_out x d_in``), given moments of the side named by ``side``."""
    if method not in METHODS:
        raise LordError(f"unknown method {method!r}; choose from: {', '.join(METHODS)}")
    W = W.detach().to(torch.float64)
    if method == "svd":
        if W.shape[0] <= W.shape[1]:  # wide: eigenvectors of the small Gram W W^T are the left singular vectors
            vals, vecs = torch.linalg.eigh(W @ W.T)
            return Basis(vecs.flip(-1), vals.flip(-1).clamp_min(0), None)
        U, S, _ = torch.linalg.svd(W, full_matrices=False)
        return Basis(U, S**2, None)
    if moments is None or moments.n == 0:
        raise LordError(f"method {method!r} needs calibration statistics; pass calibration data")
    dev = moments.sum_vv.device
    W = W.to(dev)
    centred = method in ("lord", "lord_meanfix")
    if side == "output":
        M = moments.covariance() if centred else moments.second_moment()
        vals, vecs = torch.linalg.eigh(M)
        Q, spectrum = vecs.flip(-1), vals.flip(-1).clamp_min(0)
        mean_z = moments.mean()
    elif side == "input":
        C = moments.covariance() if centred else moments.second_moment()
        U, S, _ = torch.linalg.svd(W @ _sym_sqrt_factor(C), full_matrices=False)
        Q, spectrum = U, S**2
        mean_z = W @ moments.mean()
    else:
        raise ValueError(f"side must be 'input' or 'output', got {side!r}")
    return Basis(Q, spectrum, mean_z)


def factors(method: str, basis: Basis, W: torch.Tensor, b: torch.Tensor | None, rank: int):
    """(A, B, bias) in float64 for ``rank``; ``bias`` is None when the layer keeps none."""
    if not 0 < rank <= basis.Q.shape[1]:
        raise LordError(f"rank {rank} outside 1..{basis.Q.shape[1]} for this layer")
    Qr = basis.Q[:, :rank].to(torch.float64)
    W = W.detach().to(torch.float64).to(Qr.device)
    b = None if b is None else b.detach().to(torch.float64).to(Qr.device)
    A = Qr.T @ W
    if method == "lord":
        bias = None if b is None else Qr @ (Qr.T @ b)
    elif method == "lord_meanfix":
        m = basis.mean_z
        bias = (m - Qr @ (Qr.T @ m)) + (0 if b is None else b)
    else:
        bias = b
    return A, Qr, bias


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

"""MLP neuron selection (MoDeGPT's type-I compression): an MLP block keeps ``k`` of its intermediate neurons, chosen by
ridge leverage, and its down projection is refitted on them (Nystrom). This module holds the formulas;
``lord.neuron_selection`` gathers the statistics and changes the model.

An MLP block computes ``y = W h + b`` with ``h = act(x W_gate^T) * (x W_up^T)`` (SwiGLU; ``h = act(x W_up^T)``
without a gate): ``W`` (``d_model x d_ff``) is ``down_proj``'s weight, ``b`` its bias (or none). Neuron ``j`` is row
``j`` of ``W_gate`` and ``W_up`` (and of their biases) and column ``j`` of ``W``. Keeping the neurons ``S``
(``|S| = k``) keeps those rows, so ``h_S`` -- the kept entries of ``h`` -- is computed exactly, and only the down
projection changes: ``W'`` (``d_model x k``) replaces ``W``.

**Statistics.** Over the calibration tokens, ``mu = E[h]`` and the matrix ``K`` the fit reads:

* ``down_proj`` without a bias: ``K = E[h h^T]`` (second moment: no offset can absorb the mean);
* ``down_proj`` with a bias: ``K = E[(h - mu)(h - mu)^T]`` (covariance: the bias absorbs the mean, below).

Ridges are relative to the mean eigenvalue ``tr(K) / d_ff``: ``lam = ridge * tr(K) / d_ff`` and
``lam' = refit_ridge * tr(K) / d_ff``.

**Selection.** The ridge leverage score of neuron ``j`` is ``[K (K + lam I)^-1]_jj = 1 - lam [(K + lam I)^-1]_jj``;
the ``k`` neurons of highest score are kept (ties: the lower index first). One order serves every ``k``, so the
kept sets of different ``k`` are nested. Kept neurons stay in their original order in the smaller layers.

**Refit.** ``W'`` minimises

    J(W') = E||W h - W' h_S||^2 + lam' ||W_S - W'||_F^2

-- a ridge towards the kept columns ``W_S`` (``lam' -> inf`` is plain pruning, no refit; a ridge towards zero
instead would not give back ``W`` when every neuron is kept). With ``D = W - [W' on columns S, zero elsewhere]``,
``J = tr(D (K + lam' I) D^T)``, so with ``K_l = K + lam' I``:

    W' = W K_l[:, S] K_l[S, S]^-1 = (W K[:, S] + lam' W_S) (K[S, S] + lam' I)^-1.

Keeping every neuron gives ``W' = W`` exactly, whatever ``lam'``. With a bias, the objective is
``E||(W h + b) - (W' h_S + b')||^2``; its minimum over ``b'`` is at ``b' = b + W mu - W' mu_S``, and what remains
is ``J`` with the centred ``K``. Then ``E[W' h_S + b'] = W mu + b``: the mean output over the calibration tokens is
kept exactly.

**Cost.** At the refit, ``J_min(S) = tr(W (K_l - K_l[:, S] K_l[S, S]^-1 K_l[S, :]) W^T)`` (a Schur complement). With
the neurons in leverage order ``P`` and the Cholesky factor ``K_l[P, P] = L L^T``, the Schur complement of the
first ``k`` is ``L[:, k:] L[:, k:]^T``, so one factorisation gives the cost of every ``k``:

    J_min(k) = sum_{j >= k} ||W[:, P] L[:, j]||^2.

``spectrum_j = ||W[:, P] L[:, j]||^2`` (the cost of dropping the ``j``-th neuron of the order, given the ones before
it) has the form of a low-rank method's spectrum -- its tail sums are the loss -- so every rank allocation
criterion allocates neurons as it allocates ranks. Its unit is ``whiten``'s: squared output error per token.
"""

from __future__ import annotations

import torch

from lord.calibration import Moments
from lord.errors import LordError


def fit_statistics(moments: Moments, centred: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(``K``, ``mu``) in float64: the covariance of ``h`` when ``centred`` (down_proj has a bias), else its second
    moment; and its mean."""
    if moments.n == 0:
        raise LordError("neuron selection needs calibration statistics of the MLP's hidden activations; "
                        "no calibration token reached it")
    K = moments.covariance() if centred else moments.second_moment()
    return (K + K.T) / 2, moments.mean()


def absolute_ridge(K: torch.Tensor, relative: float) -> float:
    """``relative * tr(K) / d_ff`` (``relative`` itself when ``K`` is zero: every neuron silent)."""
    return relative * (float(torch.trace(K)) / K.shape[0] or 1.0)


def _plus_ridge(M: torch.Tensor, lam: float) -> torch.Tensor:
    """``M + lam I`` (a new matrix; no identity is formed: at d_ff = 8,960 one is 640 MB)."""
    out = M.clone()
    out.diagonal().add_(lam)
    return out


def _cholesky(M: torch.Tensor, what: str) -> torch.Tensor:
    L, info = torch.linalg.cholesky_ex(M)
    if int(info):
        raise LordError(f"{what} is not positive definite: the calibration statistics are degenerate, or the ridge is "
                        "below their float32 precision; raise neurons.ridge / neurons.refit_ridge (e.g. ten times)")
    return L


def leverage_scores(K: torch.Tensor, ridge: float) -> torch.Tensor:
    """Ridge leverage scores ``diag(K (K + lam I)^-1)``, ``lam = ridge * tr(K) / d_ff``: each in [0, 1)."""
    lam = absolute_ridge(K, ridge)
    L = _cholesky(_plus_ridge(K, lam), "K + lam I of the leverage scores")
    return 1 - lam * torch.diagonal(torch.cholesky_inverse(L))


def neuron_order(scores: torch.Tensor) -> torch.Tensor:
    """Neuron indices by decreasing score, ties by increasing index (deterministic)."""
    return torch.argsort(-scores, stable=True)


def kept_neurons(order: torch.Tensor, k: int) -> torch.Tensor:
    """The first ``k`` neurons of ``order``, in increasing index order (the order the smaller layers keep them in)."""
    if not 0 < k <= order.numel():
        raise LordError(f"an MLP block with {order.numel()} neurons cannot keep {k}")
    return torch.sort(order[:k]).values


def residual_spectrum(W: torch.Tensor, K: torch.Tensor, order: torch.Tensor, refit_ridge: float) -> torch.Tensor:
    """``spectrum_j = ||W[:, P] L[:, j]||^2`` with ``K_l[P, P] = L L^T``: its tail sum from ``k`` on is the refit's
    objective ``J_min`` when the first ``k`` neurons of ``order`` are kept."""
    lam = absolute_ridge(K, refit_ridge)
    Kp = K[order][:, order]
    Kp.diagonal().add_(lam)
    L = _cholesky(Kp, "K + lam' I of the refit")
    del Kp
    return (W.to(K.dtype)[:, order] @ L).square().sum(0)


def refit_down(W: torch.Tensor, K: torch.Tensor, kept: torch.Tensor, refit_ridge: float) -> torch.Tensor:
    """``W' = (W K[:, S] + lam' W_S) (K[S, S] + lam' I)^-1`` (``d_model x k``), float64."""
    W = W.to(K.dtype)
    lam = absolute_ridge(K, refit_ridge)
    M = K[kept][:, kept]
    M.diagonal().add_(lam)
    R = W @ K[:, kept] + lam * W[:, kept]
    return torch.cholesky_solve(R.T, _cholesky(M, "K[S, S] + lam' I of the refit")).T


def refit_bias(W: torch.Tensor, W_kept: torch.Tensor, b: torch.Tensor, mu: torch.Tensor,
               kept: torch.Tensor) -> torch.Tensor:
    """``b' = b + W mu - W' mu_S``: the mean output over the calibration tokens stays ``W mu + b``."""
    return b.to(mu.dtype) + W.to(mu.dtype) @ mu - W_kept @ mu[kept]


def objective(W: torch.Tensor, W_kept: torch.Tensor, K: torch.Tensor, kept: torch.Tensor, refit_ridge: float) -> float:
    """``J(W') = tr(D (K + lam' I) D^T)``, ``D = W - [W' on columns S]`` (the refit's objective, for any ``W'``)."""
    D = W.to(K.dtype).clone()
    D[:, kept] -= W_kept.to(K.dtype)
    lam = absolute_ridge(K, refit_ridge)
    return float(torch.trace(D @ K @ D.T) + lam * D.square().sum())

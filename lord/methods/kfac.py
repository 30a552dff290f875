"""``kfac``: the rank-r ``W'`` that least raises the loss under the K-FAC curvature (two-sided whitening).

With the layer's input second moment ``A = E[x x^T]`` and the second moment of the loss's gradient at its output
``G = E[g g^T]`` (``lord.curvature``), changing ``W`` by ``D`` raises the loss by about ``1/2 tr(G D A D^T)`` per
token. Over rank-r ``W'`` that is ``||G^1/2 (W - W') A^1/2||_F^2``, minimised by

    W' = G^-1/2 SVD_r(G^1/2 W A^1/2) A^-1/2 = G^-1/2 U_r U_r^T G^1/2 W,     U: left singular vectors of G^1/2 W L,

with ``L L^T = A`` (no inverse of ``A`` is formed). So ``B = G^-1/2 U_r`` and ``A_factor = (G^1/2 U_r)^T W``: an
oblique projection (``Basis.dual`` holds ``G^1/2 U``); every rank is a slice of one basis, as for the other methods.
The spectrum ``S^2`` is, per dropped column, twice the loss increase the curvature predicts per token: a
truncation loss in the loss's own units, comparable across layers.

``G`` is damped before its root is taken: ``G + damping * mean(diag G) * I`` (directions the loss never moves
would otherwise get an infinite ``G^-1/2``). With ``G = I`` (``output_metric=identity``) the method is ``whiten``
exactly (tested). ``output_metric=diagonal`` keeps only ``diag(G)``. A group's members keep one ``G`` each (block
diagonal). The layer's bias is kept as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from lord.curvature import OUTPUT_FORMS
from lord.errors import LordError
from lord.methods.base import METHODS, Basis, Method, MethodConfig, _sym_sqrt_factor


def _available_memory() -> int | None:
    """Bytes of memory available (Linux ``MemAvailable``), None where it cannot be read."""
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


@dataclass
class KfacConfig(MethodConfig):
    output_metric: str = "full"  # full | diagonal | identity (lord.curvature.OUTPUT_FORMS)
    damping: float = 0.01  # relative to the mean diagonal entry of G


def root_pair(g, damping: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(G^1/2, G^-1/2) of the damped ``G`` of a ``lord.curvature.SecondMoment``, float64: symmetric matrices, or
    vectors (the diagonal) when only ``diag(G)`` was kept."""
    m = g.sum.to(torch.float64) / max(g.n, 1)
    diag = m if g.diagonal else torch.diagonal(m)
    shift = damping * float(diag.mean().clamp_min(0)) or 1e-12
    if g.diagonal:
        d = m.clamp_min(0) + shift
        return d.sqrt(), d.rsqrt()
    vals, vecs = torch.linalg.eigh((m + m.T) / 2 + shift * torch.eye(m.shape[0], dtype=m.dtype, device=m.device))
    vals = vals.clamp_min(shift)
    return (vecs * vals.sqrt()) @ vecs.T, (vecs * vals.rsqrt()) @ vecs.T


def blockwise(blocks: list[torch.Tensor], X: torch.Tensor) -> torch.Tensor:
    """``block_diag(*blocks) @ X`` without forming the block-diagonal matrix (a 1-D block is a diagonal)."""
    out, row = [], 0
    for b in blocks:
        x = X[row:row + b.shape[0]]
        out.append(b[:, None] * x if b.dim() == 1 else b @ x)
        row += b.shape[0]
    return torch.cat(out)


class OutputMetric:
    """The damped ``G`` of one target, block diagonal over its members (a 1-D block is a diagonal), applied blockwise:
    ``G X``, ``G^1/2 X`` and ``G^-1/2 X``. The metric ``kfac`` weighs a layer's output errors in; stage ``anchor``
    fits in it with ``anchor.metric=loss``."""

    def __init__(self, curvature, damping: float, device=None):
        pairs = [root_pair(g, damping) for g in curvature.G]
        self.roots = [r.to(device) for r, _ in pairs]
        self.inv_roots = [i.to(device) for _, i in pairs]

    @cached_property
    def blocks(self) -> list[torch.Tensor]:
        """The damped ``G`` itself, block by block (formed on first use: the bases need only its roots)."""
        return [r * r if r.dim() == 1 else r @ r for r in self.roots]

    def __call__(self, X: torch.Tensor) -> torch.Tensor:
        return blockwise(self.blocks, X)

    def root(self, X: torch.Tensor) -> torch.Tensor:
        return blockwise(self.roots, X)

    def inv_root(self, X: torch.Tensor) -> torch.Tensor:
        return blockwise(self.inv_roots, X)


@METHODS.register("kfac")
class Kfac(Method):
    config_class = KfacConfig
    statistic = "curvature"

    def __init__(self, config: KfacConfig | None = None):
        super().__init__(config)
        c = self.config
        if c.output_metric not in OUTPUT_FORMS:
            raise LordError(f"method.output_metric={c.output_metric!r} is unknown; allowed: {', '.join(OUTPUT_FORMS)}")
        if isinstance(c.damping, bool) or not isinstance(c.damping, (int, float)) or not c.damping > 0:
            raise LordError(f"method.damping={c.damping!r} must be a number > 0 (relative to the mean of diag G)")

    @property
    def output_form(self) -> str:
        """Which K-FAC output factor the statistics must hold (``lord.curvature.collect_curvature``'s ``output``)."""
        return self.config.output_metric

    def check_targets(self, model, targets) -> None:
        """The factors must fit in memory: every distinct input's A and every member's G (full) in float32."""
        from lord.calibration import target_shape

        inputs, outputs = {}, 0
        for t in targets:
            d_in, d_outs = target_shape(model, t)
            inputs[t.input_key] = d_in
            outputs += sum(d * d if self.config.output_metric == "full" else d for d in d_outs) \
                if self.config.output_metric != "identity" else 0
        need = 4 * (sum(d * d for d in inputs.values()) + outputs)
        available = _available_memory()
        if available is not None and need > 0.8 * available:
            hint = ("method.output_metric=diagonal (only diag G: memory of the order of the outputs)"
                    if self.config.output_metric == "full" else "fewer layers (layers=..., layers.indices=...)")
            raise LordError(f"method kfac ({self.config.output_metric} G) needs {need / 2**30:.1f} GiB for its "
                            f"statistics of {len(targets)} targets, more than 80 % of the {available / 2**30:.1f} GiB "
                            f"available; use {hint}")

    def output_metric(self, curvature, device=None) -> OutputMetric | None:
        """The metric this method weighs ``curvature``'s layer outputs in: its damped ``G``, None for ``G = I``."""
        return None if curvature.G is None else OutputMetric(curvature, self.config.damping, device)

    def basis(self, W, curvature, side) -> Basis:
        if curvature is None:
            raise LordError("method 'kfac' needs calibration data (a forward and backward pass)")
        W = W.detach().to(torch.float64).to(curvature.A.sum.device)
        L = _sym_sqrt_factor(curvature.A.matrix())
        if curvature.G is None:
            U, S, _ = torch.linalg.svd(W @ L, full_matrices=False)
            return Basis(U, S**2, None)
        G = self.output_metric(curvature)
        U, S, _ = torch.linalg.svd(G.root(W) @ L, full_matrices=False)
        Q = G.inv_root(U)  # G^-1/2 U
        dual = G.root(U)  # G^1/2 U: dual^T Q = U^T U = I
        return Basis(Q, S**2, None, dual)

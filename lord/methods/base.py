"""What every decomposition method is: a typed config, the statistics it reads, a basis, a bias rule.

All built-in methods are projections. With an orthonormal basis ``Q`` of the output space (most important
column first) and ``Q_r`` its first ``r`` columns: ``B = Q_r``, ``A = Q_r^T W`` (so ``W' = Q_r Q_r^T W``); a
method chooses ``Q`` (``basis``) and the output bias (``output_bias``). A basis is computed once per layer and
every rank is a slice of it, which is what makes rank sweeps cheap; methods whose ``basis_key`` is equal share
bases (``lord`` and ``lord_meanfix`` differ only in the bias).

A new method is one module in this package::

    @METHODS.register("my_method")
    class MyMethod(Method):
        config_class = MyMethodConfig          # a dataclass of its options (they become conf/method keys)
        def basis(self, W, moments, side): ...

plus ``conf/method/my_method.yaml`` (``name: my_method`` and the options).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch

from lord.calibration import Moments
from lord.errors import LordError
from lord.registry import Registry

METHODS: Registry["Method"] = Registry("method", "lord.methods")


@dataclass
class Basis:
    Q: torch.Tensor  # (d_out, k), orthonormal columns, most important first (B = Q_r)
    spectrum: torch.Tensor  # (k,) variance captured by each column (eigenvalues / squared singular values)
    mean_z: torch.Tensor | None  # (d_out,) mean of bias-free outputs W x on the calibration data
    # (d_out, k) with dual^T Q = I, when the projection is oblique (kfac): A = dual_r^T W; None: A = Q_r^T W
    dual: torch.Tensor | None = None

    def with_dtype(self, dtype) -> "Basis":
        return Basis(self.Q.to(dtype), self.spectrum, self.mean_z, None if self.dual is None else self.dual.to(dtype))


@dataclass
class MethodConfig:
    """Options of a method; one with options subclasses this and names it as its ``config_class``."""

    name: str = ""


class Method:
    name: ClassVar[str]
    config_class: ClassVar[type] = MethodConfig
    needs_statistics: ClassVar[bool] = True  # False: data-free (no calibration pass)
    # what ``basis`` reads: "moments" (lord.calibration.Moments of the smaller side), "channel_abs_mean"
    # (lord.calibration.ChannelAbsMean of the input channels, side "input") or "curvature" (lord.curvature.Curvature:
    # input second moment and output-gradient second moment, side "both")
    statistic: ClassVar[str] = "moments"
    keeps_mean: ClassVar[bool] = False  # True: every member gets an output bias, even where the layer had none
    decomposes: ClassVar[bool] = True  # False only for ``dense`` (the model is left as it is)

    def __init__(self, config: MethodConfig | None = None):
        self.config = config if config is not None else self.config_class(name=self.name)

    @classmethod
    def from_options(cls, options: dict) -> "Method":
        fields = {f.name for f in dataclasses.fields(cls.config_class)}
        unknown = sorted(set(options) - fields)
        if unknown:
            raise LordError(f"method {cls.name!r} has no option(s) {', '.join(unknown)}; its options: "
                            f"{', '.join(sorted(fields - {'name'})) or 'none'}")
        return cls(cls.config_class(**{**options, "name": cls.name}))

    def check_targets(self, model, targets) -> None:
        """Config errors only the weightless model can show (before any weights load); none by default."""

    def basis_key(self) -> str:
        """Equal keys mean equal bases for the same weights and statistics (they are shared and cached)."""
        opts = {k: v for k, v in dataclasses.asdict(self.config).items() if k != "name"}
        return f"{type(self).__name__}{opts if opts else ''}"

    def basis(self, W: torch.Tensor, moments: Moments | None, side: str | None) -> Basis:
        """The basis for ``W`` (``d_out x d_in``, float64) given the statistic it reads (``statistic``) of
        ``side`` ("input"/"output")."""
        raise NotImplementedError

    def output_bias(self, basis: Basis, Qr: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor | None:
        return b

    def factors(self, basis: Basis, W: torch.Tensor, b: torch.Tensor | None, rank: int):
        """(A, B, bias) in float64 for ``rank``; ``bias`` is None when the layer keeps none."""
        if not 0 < rank <= basis.Q.shape[1]:
            raise LordError(f"rank {rank} outside 1..{basis.Q.shape[1]} for this layer")
        Qr = basis.Q[:, :rank].to(torch.float64)
        W = W.detach().to(torch.float64).to(Qr.device)
        b = None if b is None else b.detach().to(torch.float64).to(Qr.device)
        left = Qr if basis.dual is None else basis.dual[:, :rank].to(torch.float64).to(Qr.device)
        return left.T @ W, Qr, self.output_bias(basis, Qr, b)


def _sym_sqrt_factor(C: torch.Tensor) -> torch.Tensor:
    """An ``L`` with ``L L^T = C`` for symmetric positive semi-definite ``C`` (no shift needed)."""
    vals, vecs = torch.linalg.eigh(C)
    return vecs * vals.clamp_min(0).sqrt()


def moment_basis(W: torch.Tensor, moments: Moments | None, side: str | None, centred: bool, method: str) -> Basis:
    """Eigenvectors of the output covariance (``centred``) or second moment of ``z = W x``.

    From the output side they are those of the accumulated matrix; from the input side (``d_out >= d_in``)
    the eigenvectors of ``W C W^T`` with ``C = L L^T`` are the left singular vectors of ``W L``, so the
    ``d_out x d_out`` matrix is never formed.
    """
    if moments is None or moments.n == 0:
        raise LordError(f"method {method!r} needs calibration statistics; pass calibration data")
    W = W.detach().to(torch.float64).to(moments.sum_vv.device)
    M = moments.covariance() if centred else moments.second_moment()
    if side == "output":
        vals, vecs = torch.linalg.eigh(M)
        return Basis(vecs.flip(-1), vals.flip(-1).clamp_min(0), moments.mean())
    if side == "input":
        U, S, _ = torch.linalg.svd(W @ _sym_sqrt_factor(M), full_matrices=False)
        return Basis(U, S**2, W @ moments.mean())
    raise ValueError(f"side must be 'input' or 'output', got {side!r}")

"""``whiten``: the minimiser of ``||(W - W') X||_F`` over rank-r ``W'`` (SVD-LLM's objective).

With ``X X^T = n L L^T`` that is ``||(W - W') L||_F``, minimised by the truncated SVD of ``W L``, whose column
space is that of ``U_r``; projecting, ``W' = U_r U_r^T W``. Equivalently AFM on the *uncentred*, bias-free
outputs. The bias is kept as it is.
"""

from __future__ import annotations

from lord.methods.base import METHODS, Basis, Method, moment_basis


@METHODS.register("whiten")
class Whiten(Method):
    def basis(self, W, moments, side) -> Basis:
        return moment_basis(W, moments, side, centred=False, method=self.name)

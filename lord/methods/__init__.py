"""Decomposition methods, one module each, registered in ``METHODS`` (see ``lord.methods.base``).

==================  ==============================================================  ===========================
method              basis Q                                                           output bias
==================  ==============================================================  ===========================
``lord``            eigenvectors of the *centred* output covariance (paper Eq. 4)     ``Q_r Q_r^T b`` (Eq. 5)
``lord_meanfix``    same as ``lord``                                                  ``b + (I - Q_r Q_r^T) W mu``
``whiten``          left singular vectors of ``W L``, ``E[x x^T] = L L^T``            ``b``
``svd``             left singular vectors of ``W`` (data-free)                        ``b``
``dense``           none: the model is left as it is                                  --
==================  ==============================================================  ===========================
"""

from __future__ import annotations

from lord.errors import LordError
from lord.methods.base import METHODS, Basis, Method, MethodConfig
from lord.methods.lord import output_errors


def get_method(spec) -> Method:
    """A method instance from a name, a dict of options with ``name``, or an instance (returned as is)."""
    if isinstance(spec, Method):
        return spec
    if isinstance(spec, str):
        return METHODS.get(spec)()
    if isinstance(spec, dict) and "name" in spec:
        options = {k: v for k, v in spec.items() if k != "name"}
        return METHODS.get(spec["name"]).from_options(options)
    raise LordError(f"a method is a name or a mapping with 'name', got {spec!r}")


def compute_basis(method, W, moments, side) -> Basis:
    return get_method(method).basis(W, moments, side)


def factors(method, basis: Basis, W, b, rank: int):
    return get_method(method).factors(basis, W, b, rank)


__all__ = ["METHODS", "Basis", "Method", "MethodConfig", "compute_basis", "factors", "get_method", "output_errors"]

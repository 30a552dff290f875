"""``dense``: no decomposition -- the baseline every other method is compared with."""

from __future__ import annotations

from lord.methods.base import METHODS, Method


@METHODS.register("dense")
class Dense(Method):
    needs_statistics = False
    decomposes = False

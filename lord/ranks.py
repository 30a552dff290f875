"""Ranks and their parameter cost (paper appendix A.3).

A rank is asked for in one of three units:

* ``reduction`` — percent rank reduction of each matrix's ``d_min`` (the paper's x-axis):
  ``r = round(d_min * (1 - p/100))``;
* ``rank`` — an absolute rank, the same for every target (the paper's tables);
* ``param_fraction`` — the decomposed layer keeps this fraction of the dense layer's weights:
  ``r = floor(f * d_out * d_in / (d_out + d_in))``;
* ``budget`` — remove ``value`` percent of the selected layers' parameters, with a rank per matrix chosen by
  the criterion ``allocation`` (``uniform``, ``svdllm_v2``, ``greedy``: ``lord.allocation``) from the method's
  spectra; a matrix may stay dense. Allocated in ``Compressor.apply``, never per matrix here.

``round_to`` rounds the result to the nearest multiple (the paper's "preferred ranks", §3.1).
A rank that would make the layer *larger* than the dense one is an error unless ``force`` is set:
the paper's all-layer rows at small reductions do exactly that, and their presets force it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lord.errors import LordError

UNITS = ("reduction", "rank", "param_fraction", "budget")


@dataclass(frozen=True)
class RankSpec:
    unit: str = "reduction"
    value: float = 10.0
    round_to: int = 1
    force: bool = False
    allocation: str = "uniform"  # unit=budget only: the criterion (a name in lord.allocation.ALLOCATORS)

    def __post_init__(self):
        if self.unit not in UNITS:
            raise LordError(f"unknown rank unit {self.unit!r}; choose from: {', '.join(UNITS)}")
        if isinstance(self.value, bool) or not isinstance(self.value, (int, float)) or not math.isfinite(self.value):
            raise LordError(f"rank value must be a finite number, got {self.value!r}")
        if self.unit == "reduction" and not 0 <= self.value < 100:
            raise LordError(f"rank reduction must be in [0, 100) percent, got {self.value}")
        if self.unit == "rank" and (self.value != int(self.value) or self.value <= 0):
            raise LordError(f"an absolute rank must be a positive integer, got {self.value!r}")
        if self.unit == "param_fraction" and not 0 < self.value <= 1:
            raise LordError(f"param_fraction must be in (0, 1], got {self.value}")
        if self.unit == "budget":
            from lord.allocation import ALLOCATORS

            if not 0 < self.value < 100:
                raise LordError("a parameter budget is the percent of parameters removed, in (0, 100); "
                                f"got {self.value}")
            if self.allocation not in ALLOCATORS:
                raise LordError(f"unknown rank allocation {self.allocation!r}; choose from: "
                                f"{', '.join(ALLOCATORS.names())}")
        if not isinstance(self.round_to, int) or self.round_to < 1:
            raise LordError(f"round_to must be a positive integer, got {self.round_to!r}")

    def resolve(self, d_out: int, d_in: int, what: str = "layer") -> int:
        """The integer rank for a ``d_out x d_in`` matrix, validated."""
        if self.unit == "budget":
            raise LordError("rank unit 'budget' allocates ranks across the whole selection from calibration "
                            "spectra (Compressor.apply), not one matrix at a time")
        d_min = min(d_out, d_in)
        if self.unit == "reduction":
            r = round(d_min * (1 - self.value / 100))
        elif self.unit == "rank":
            r = int(self.value)
        else:
            r = math.floor(self.value * d_out * d_in / (d_out + d_in))
        if self.round_to > 1:
            r = max(self.round_to, self.round_to * round(r / self.round_to))
            r = min(r, d_min)
        if r <= 0:
            raise LordError(f"{what}: rank {self} resolves to {r} for a {d_out}x{d_in} matrix; ask for a larger rank")
        if r > d_min:
            raise LordError(f"{what}: rank {r} exceeds d_min={d_min} of its {d_out}x{d_in} matrix; "
                            f"use a rank <= {d_min}")
        if not self.force and r * (d_out + d_in) > d_out * d_in:
            raise LordError(
                f"{what}: rank {r} on a {d_out}x{d_in} matrix adds parameters (parity rank "
                f"{parity_rank(d_out, d_in)}); lower the rank or set force=true to allow it"
            )
        return r


def aspect_ratio(d_out: int, d_in: int) -> float:
    """alpha = d_min / d_max (A.3)."""
    return min(d_out, d_in) / max(d_out, d_in)


def percent_param_change(alpha: float, percent_rank_reduction: float) -> float:
    """Eq. 6: % change in a matrix's parameters after decomposition at a % rank reduction."""
    return 100 * alpha - (1 + alpha) * percent_rank_reduction


def parity_reduction(alpha: float) -> float:
    """% rank reduction at which the decomposed matrix has as many parameters as the dense one."""
    return 100 * alpha / (1 + alpha)


def parity_rank(d_out: int, d_in: int) -> int:
    """Largest rank that does not add parameters: r (d_out + d_in) <= d_out d_in."""
    return d_out * d_in // (d_out + d_in)


def percent_rank_reduction(rank: int, d_min: int) -> float:
    return 100 * (d_min - rank) / d_min

"""``uniform``: every matrix keeps the same share of its parameters (``rank.unit=param_fraction`` at
``1 - p/100``): the paper's one-rank-for-all, stated in parameters instead of rank."""

from __future__ import annotations

from lord.allocation.base import ALLOCATORS, Allocator


@ALLOCATORS.register("uniform")
class Uniform(Allocator):
    def propose(self, candidates, percent, step):
        return {c.name: c.rank_for_fraction(1 - percent / 100, step) for c in candidates}

"""``greedy``: the least loss per parameter removed, across all matrices (this project's criterion).

Each matrix's cost of a rank is the share of its own truncation loss it drops (``loss(r) / loss(0)``: the
fraction of the method's objective lost -- for ``whiten``, of the layer's output energy on the calibration data).
These shares are summed over matrices -- the diagnosis measured that layer kinds' log-perplexity increases add up
(0.98-1.0 of the all-layer value) -- and minimised for the budget: every matrix's points (parameters removed,
loss share), dense at (0, 0), are reduced to their lower convex hull, and the hull segments of all matrices are
taken in the order of their slope (loss share per parameter) until the budget is met. That is the optimum of the
relaxed problem (fractions of a segment allowed); ``fit_to_budget`` settles the last segment in whole rank steps.
A matrix whose first segment is never reached stays dense: no rank of it pays for its loss.
"""

from __future__ import annotations

from lord.allocation.base import ALLOCATORS, Allocator, allowed_parameters


def lower_hull(points: list[tuple[int, float, int | None]]) -> list[tuple[int, float, int | None]]:
    """The lower convex hull of (x, y, rank) points sorted by x, starting at the first."""
    hull: list = []
    for p in points:
        while len(hull) >= 2:
            (x1, y1, _), (x2, y2, _) = hull[-2], hull[-1]
            if (y2 - y1) * (p[0] - x1) >= (p[1] - y1) * (x2 - x1):  # hull[-1] lies on or above the chord
                hull.pop()
            else:
                break
        hull.append(p)
    return hull


@ALLOCATORS.register("greedy")
class Greedy(Allocator):
    def propose(self, candidates, percent, step):
        segments = []
        for c in candidates:
            top = c.max_rank(step)
            points = [(0, 0.0, None)] + [(c.dense_params - c.kept(r), c.loss_fraction(r), r)
                                         for r in range(top, step - 1, -step)]
            hull = lower_hull(points)
            for (x1, y1, _), (x2, y2, r) in zip(hull, hull[1:]):
                segments.append(((y2 - y1) / (x2 - x1), c.name, r, x2 - x1))
        need = sum(c.dense_params for c in candidates) - allowed_parameters(candidates, percent)
        ranks: dict = {c.name: None for c in candidates}
        removed = 0
        for _, name, r, dx in sorted(segments, key=lambda s: s[0]):
            if removed >= need:
                break
            ranks[name] = r
            removed += dx
        return ranks

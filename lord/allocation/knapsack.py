"""Exact allocation: one option per matrix (dense, or one of a few ranks) minimising a summed cost under the budget.

That is a multiple-choice knapsack, solved exactly as an integer program (PuLP with its bundled CBC solver,
``requirements-extras.txt``): binary ``x[i, o]``, ``sum_o x[i, o] = 1`` for every matrix ``i``,
``sum x[i, o] kept[i, o] <= allowed``, minimise ``sum x[i, o] cost[i, o]``. Two criteria use it:

* ``loss_estimate`` -- the cost of a rank is the method's own truncation loss at that rank (the spectrum's tail),
  no forward pass. Summing it across matrices needs a loss in common units: ``kfac``'s spectrum is (twice) the
  loss increase per token that the curvature predicts, so with ``method=kfac`` this is a second-order estimate of
  the model's loss; with other methods the units differ per layer (``greedy``'s loss *shares* are then the
  better choice).
* ``measured`` -- the cost is the measured KL divergence between the dense model's next-token distribution and
  the model with only that matrix at that rank (``lord.sensitivity``: a table measured once per model, data,
  method and options, on calibration windows the statistics did not use, and cached).

The options are the ranks keeping ``1 - f`` of each matrix's parameters for every removal share ``f`` of the
criterion's grid, plus dense; ``fit_to_budget`` then gives back whole rank steps while they fit.
"""

from __future__ import annotations

from lord.allocation.base import ALLOCATORS, Allocator, Candidate, allowed_parameters, rank_options
from lord.errors import LordError

LOSS_ESTIMATE_GRID = tuple(range(5, 100, 5))  # % of a matrix's parameters removed: the options of loss_estimate
PULP_HINT = "pip install pulp==3.3.2 (or pip install -r requirements-extras.txt)"


def solve_choice(items: list[list[tuple[int, float]]], allowed: int) -> list[int]:
    """For each item, the index of its chosen option ``(kept parameters, cost)``: the least total cost with total
    kept parameters <= ``allowed``, exactly (an integer program). One line when no choice fits."""
    least = sum(min(k for k, _ in options) for options in items)
    if least > allowed:
        raise LordError(f"no choice of options fits the budget: the smallest option of every matrix keeps {least:,} "
                        f"parameters, {allowed:,} are allowed; add smaller options or ask for a smaller budget")
    try:
        import pulp
    except ImportError:
        raise LordError(f"this allocation solves an integer program with PuLP: {PULP_HINT}") from None
    prob = pulp.LpProblem("allocation", pulp.LpMinimize)
    x = [[pulp.LpVariable(f"x_{i}_{o}", cat="Binary") for o in range(len(options))] for i, options in enumerate(items)]
    scale = max((abs(c) for options in items for _, c in options), default=1.0) or 1.0  # costs O(1) for the solver
    prob += pulp.lpSum(x[i][o] * (c / scale) for i, options in enumerate(items) for o, (_, c) in enumerate(options))
    for row in x:
        prob += pulp.lpSum(row) == 1
    prob += pulp.lpSum(x[i][o] * k for i, options in enumerate(items) for o, (k, _) in enumerate(options)) <= allowed
    status = prob.solve(pulp.PULP_CBC_CMD(msg=False))
    if pulp.LpStatus[status] != "Optimal":
        raise LordError(f"the allocation's integer program ended {pulp.LpStatus[status]!r}, not optimal")
    return [max(range(len(row)), key=lambda o: row[o].value() or 0.0) for row in x]


class ExactChoice(Allocator):
    """An allocator whose cost of each (matrix, option) is known: ``option_costs``; the choice is exact."""

    def option_costs(self, c: Candidate, step: int) -> list[tuple[int | None, float]]:
        raise NotImplementedError

    def propose(self, candidates, percent, step):
        options = [self.option_costs(c, step) for c in candidates]
        items = [[(c.kept(r), cost) for r, cost in opts] for c, opts in zip(candidates, options)]
        chosen = solve_choice(items, allowed_parameters(candidates, percent))
        return {c.name: opts[i][0] for c, opts, i in zip(candidates, options, chosen)}


@ALLOCATORS.register("loss_estimate")
class LossEstimate(ExactChoice):
    def option_costs(self, c, step):
        return [(r, c.loss(r)) for r in rank_options(c, LOSS_ESTIMATE_GRID, step)]


@ALLOCATORS.register("measured")
class Measured(ExactChoice):
    needs_measurement = True

    def option_costs(self, c, step):
        if c.costs is None:
            raise LordError(f"allocation 'measured' has no sensitivity table for {c.name}: it is measured by the "
                            "Compressor (lord.sensitivity) before allocating")
        top = c.max_rank(step)  # options that are not multiples of the step, or add parameters, are not offered
        return [(None, 0.0)] + sorted(((r, kl) for r, kl in c.costs.items()
                                       if r is not None and r % step == 0 and step <= r <= top), key=lambda o: -o[0])

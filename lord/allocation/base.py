"""What an allocation criterion is, and the budget every criterion is held to.

The budget: ``rank.value = p`` percent of the selection's parameters removed -- the dense parameters (weights and
existing biases) of the matrices the layer selection names, in the blocks it names; embeddings and the LM head
count only when they are selected. After allocation the kept parameters are at most ``(1 - p/100)`` of them
(never over budget), and no single rank step (``round_to`` ranks of one matrix, or putting a matrix back to dense)
still fits in what is left: the allocation lands within one rank step of the budget.

A matrix either stays dense or gets a rank ``r`` (a multiple of ``round_to``) whose factors hold *fewer*
parameters than the dense matrix: a rank that adds parameters is never allocated, with or without
``rank.force`` (the dense matrix is then both smaller and exact).

A criterion (``Allocator``) proposes ranks from each matrix's *truncation loss*: the method's own spectrum, the
loss its objective has when columns ``r+1...`` of the basis are dropped (``lord``/``lord_meanfix``: centred output
variance; ``whiten``: ``||(W - W')X||_F^2 / n``, SVD-LLM's loss; ``svd``: ``||W - W'||_F^2``; ``asvd``: the
scaled weight's). ``fit_to_budget`` then moves ranks one step at a time until the budget holds, in the order of
the smallest loss fraction per parameter (the share of a matrix's total loss, so matrices of any scale compare).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from lord.errors import LordError
from lord.registry import Registry

ALLOCATORS: Registry["Allocator"] = Registry("rank allocation", "lord.allocation")


@dataclass
class Candidate:
    """One matrix (a target: one module, or a group sharing ``A``) that the allocation may decompose."""

    name: str
    kind: str  # layer kind ("mlp_down", "attn_qkv", "mlp_gate+mlp_up", ...): SVD-LLM V2 groups by it
    dense_params: int  # weights + existing biases
    per_rank: int  # parameters per unit of rank: d_in + sum(d_outs)
    bias_params: int  # biases once decomposed (the existing ones, plus those a mean-keeping method adds)
    d_min: int
    spectrum: torch.Tensor  # truncation loss per basis column, most important first (float64)
    per_vector: bool = False  # the spectrum is a mean over calibration vectors (moments), not a total
    costs: dict | None = None  # rank -> measured cost (allocation 'measured': lord.sensitivity), else None

    def __post_init__(self):
        s = self.spectrum.detach().to(torch.float64).cpu().clamp_min(0)
        tail = s.flip(0).cumsum(0).flip(0).tolist() + [0.0]  # tail[r] = sum of the spectrum from column r on
        self._tail = tail + [0.0] * max(0, self.d_min + 1 - len(tail))

    def kept(self, rank: int | None) -> int:
        return self.dense_params if rank is None else rank * self.per_rank + self.bias_params

    def loss(self, rank: int | None) -> float:
        return 0.0 if rank is None else self._tail[rank]

    def loss_fraction(self, rank: int | None) -> float:
        total = self._tail[0]
        return self.loss(rank) / total if total > 0 else 0.0

    def max_rank(self, step: int) -> int:
        """The largest multiple of ``step`` whose factors hold fewer parameters than the dense matrix (0: none)."""
        r = min(self.d_min, (self.dense_params - self.bias_params - 1) // self.per_rank)
        return max(0, r - r % step)

    def rank_for_fraction(self, keep: float, step: int) -> int | None:
        """The largest rank (multiple of ``step``) keeping at most ``keep`` of the dense parameters; None (dense)
        when no rank fits."""
        r = math.floor((keep * self.dense_params - self.bias_params) / self.per_rank)
        r = min(r - r % step, self.max_rank(step))
        return r if r >= step else None


def candidate_for(decomposition, spectrum: torch.Tensor, per_vector: bool = False,
                  dense_params: int | None = None) -> Candidate:
    """A ``Candidate`` from a planned ``lord.structure.Decomposition`` (its rank is not used) and its spectrum;
    ``dense_params``: the dense modules' own count (``Decomposition.dense_params`` also counts biases a
    mean-keeping method adds)."""
    d = decomposition
    bias = sum(o for o, b in zip(d.d_outs, d.bias) if b)
    dense = d.dense_params if dense_params is None else dense_params
    return Candidate(d.name, d.kind, dense, d.d_in + sum(d.d_outs), bias, min(d.d_in, sum(d.d_outs)),
                     spectrum.detach().to(torch.float64).cpu(), bool(per_vector))


class Allocator:
    """A criterion: ``propose`` ranks (None = dense) for removing ``percent`` of the candidates' parameters."""

    name: ClassVar[str]

    def propose(self, candidates: list[Candidate], percent: float, step: int) -> dict[str, int | None]:
        raise NotImplementedError


def allowed_parameters(candidates: list[Candidate], percent: float) -> int:
    return math.floor((1 - percent / 100) * sum(c.dense_params for c in candidates))


def allocate(candidates: list[Candidate], percent: float, criterion: str, step: int = 1) -> dict[str, int | None]:
    """Ranks (None: left dense) removing at least ``percent`` % of the candidates' parameters, within one rank step."""
    if not 0 < percent < 100:
        raise LordError(f"a parameter budget is a percentage in (0, 100), got {percent}")
    check_budget(candidates, percent, step)
    ranks = ALLOCATORS.get(criterion)().propose(candidates, percent, step)
    return fit_to_budget(candidates, ranks, allowed_parameters(candidates, percent), step)


def rank_options(c: Candidate, grid, step: int) -> list[int | None]:
    """Dense, and the rank keeping ``1 - f/100`` of ``c``'s parameters for each ``f`` of ``grid`` (distinct)."""
    ranks = [None]
    for f in grid:
        r = c.rank_for_fraction(1 - f / 100, step)
        if r is not None and r not in ranks:
            ranks.append(r)
    return ranks


def check_budget(candidates: list[Candidate], percent: float, step: int, grid=None) -> None:
    """Raise when even the smallest rank everywhere cannot remove ``percent`` % (before any statistics); with
    ``grid`` (the % removed per matrix that an exact allocation offers, ``lord.allocation.knapsack``), when even
    its largest option everywhere cannot."""
    dense = sum(c.dense_params for c in candidates)
    if grid is None:
        least = sum(c.kept(step) if c.max_rank(step) >= step else c.dense_params for c in candidates)
        how = f"with every matrix at rank {step}"
    else:
        least = sum(min(c.kept(r) for r in rank_options(c, grid, step)) for c in candidates)
        how = f"with every matrix at its largest option, {max(grid):g} % removed"
    most = 100 * (dense - least) / dense if dense else 0.0
    if most < percent:
        raise LordError(f"rank budget {percent:g} % is more than this selection can remove ({most:.1f} % {how}); "
                        "ask for a smaller budget, select more layers" + (", or add larger shares to the options "
                                                                          "(sensitivity.grid)" if grid else ""))


def _moves(c: Candidate, rank: int | None, step: int, down: bool):
    """(new rank, parameters freed (down) or added (up), loss-fraction change) of one rank step of ``c``."""
    top = c.max_rank(step)
    if down:
        new = top if rank is None else rank - step
        if new is not None and new >= step and (rank is None or new < rank):
            yield new, c.kept(rank) - c.kept(new), c.loss_fraction(new) - c.loss_fraction(rank)
    else:
        if rank is None:
            return
        if rank + step <= top:
            yield rank + step, c.kept(rank + step) - c.kept(rank), c.loss_fraction(rank) - c.loss_fraction(rank + step)
        yield None, c.dense_params - c.kept(rank), c.loss_fraction(rank)


def fit_to_budget(candidates: list[Candidate], ranks: dict[str, int | None], allowed: int,
                  step: int) -> dict[str, int | None]:
    """Move ranks one step at a time until ``kept <= allowed`` (cheapest loss fraction per freed parameter first),
    then give back steps while they fit (largest loss fraction recovered per added parameter first)."""
    ranks = dict(ranks)
    by_name = {c.name: c for c in candidates}
    kept = sum(c.kept(ranks.get(c.name)) for c in candidates)
    while kept > allowed:
        best = min(((dl / freed, name, new, freed) for name, c in by_name.items()
                    for new, freed, dl in _moves(c, ranks.get(name), step, down=True) if freed > 0),
                   key=lambda m: m[:2], default=None)
        if best is None:
            raise LordError("rank budget cannot be met: every matrix is at its smallest rank")
        _, name, new, freed = best
        ranks[name], kept = new, kept - freed
    while True:
        best = max(((dl / added, name, new, added) for name, c in by_name.items()
                    for new, added, dl in _moves(c, ranks.get(name), step, down=False)
                    if 0 < added <= allowed - kept), key=lambda m: (m[0], m[1]), default=None)
        if best is None:
            return ranks
        _, name, new, added = best
        ranks[name], kept = new, kept + added

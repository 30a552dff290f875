"""``svdllm_v2``: SVD-LLM V2's heterogeneous ratios (Wang et al., 2025, Alg. 1) from theoretical truncation loss.

Matrices are grouped by kind (all ``mlp_down`` of the selection, all q/k/v groups, ...). For each, ``L_i`` is its
truncation loss at the uniform ratio ``R = p/100`` -- ``sqrt(n * sum of the dropped spectrum)``, which for
``whiten`` is ``||(W - W')X||_F`` over the ``n`` calibration tokens -- and its compression ratio is
``R_i = |G| * R * (1 / log L_i) / sum_j (1 / log L_j)``: a matrix with a smaller loss is compressed more, and the
group as a whole keeps the ratio ``R`` (in shares of matrices; ``fit_to_budget`` settles the parameters).
The rule needs every ``L_i > 1`` (``1/log L`` is its score); a group where that fails gets an error, not a guess.
"""

from __future__ import annotations

import math

from lord.allocation.base import ALLOCATORS, Allocator
from lord.errors import LordError


@ALLOCATORS.register("svdllm_v2")
class TruncationLoss(Allocator):
    def propose(self, candidates, percent, step):
        R = percent / 100
        groups: dict[str, list] = {}
        for c in candidates:
            groups.setdefault(c.kind, []).append(c)
        ranks = {}
        for kind, members in groups.items():
            scores = []
            for c in members:
                r = c.rank_for_fraction(1 - R, step)
                L = math.sqrt(c.n * c.loss(r)) if r is not None else 0.0
                if not L > 1:
                    raise LordError(f"allocation svdllm_v2: the truncation loss of {c.name} at {percent:g} % is "
                                    f"{L:.3g}; its 1/log(L) rule needs L > 1 (choose allocation=greedy or uniform)")
                scores.append(1 / math.log(L))
            total = sum(scores)
            for c, s in zip(members, scores):
                ratio = min(len(members) * R * s / total, 1.0)
                ranks[c.name] = c.rank_for_fraction(1 - ratio, step)
        return ranks

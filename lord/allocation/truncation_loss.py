"""``svdllm_v2``: SVD-LLM V2's heterogeneous ratios (Wang et al., 2025, Alg. 1) from theoretical truncation loss.

Matrices are grouped by kind (all ``mlp_down`` of the selection, all q/k/v groups, ...). For each, ``L_i`` is its
truncation loss at the uniform ratio ``R = p/100`` -- for ``whiten`` ``||(W - W')X||_F``, SVD-LLM's loss -- and
its compression ratio is ``R_i = |G| * R * (1 / log L_i) / sum_j (1 / log L_j)``: a matrix with a smaller loss is
compressed more, and the group as a whole keeps the ratio ``R`` (in shares of matrices; ``fit_to_budget`` settles
the parameters).

The score ``1/log L`` depends on the scale of ``L``, which grows with the number of calibration tokens
(``||.||_F`` over ``X``): on 16 x 1,024 tokens some of the 0.5B model's attention-out layers have ``L < 1`` and
the rule breaks (a negative score). So a loss that is a mean per calibration token is scaled to the paper's
calibration set, 256 windows of 2,048 tokens (``L = sqrt(524,288 * mean loss)``): the allocation then depends on
the statistics, not on how many tokens estimated them. Totals (``svd``, ``asvd``) are used as they are. A group
where some ``L <= 1`` even so gets an error, not a guess.
"""

from __future__ import annotations

import math

from lord.allocation.base import ALLOCATORS, Allocator
from lord.errors import LordError

PAPER_TOKENS = 256 * 2048  # SVD-LLM V2's calibration set: 256 windows of 2,048 tokens


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
                L = math.sqrt((PAPER_TOKENS if c.per_vector else 1) * c.loss(r)) if r is not None else 0.0
                if not L > 1:
                    raise LordError(f"allocation svdllm_v2: the truncation loss of {c.name} at {percent:g} % is "
                                    f"{L:.3g}; its 1/log(L) rule needs L > 1 (choose allocation=greedy or uniform)")
                scores.append(1 / math.log(L))
            total = sum(scores)
            for c, s in zip(members, scores):
                ratio = min(len(members) * R * s / total, 1.0)
                ranks[c.name] = c.rank_for_fraction(1 - ratio, step)
        return ranks

"""Rank allocation at a parameter budget (``rank.unit=budget``): which rank each matrix gets so that the chosen
layers lose a given share of their parameters. One module per criterion, registered in ``ALLOCATORS``
(``lord.allocation.base``); ``allocate`` runs a criterion and fits its ranks to the budget."""

from lord.allocation.base import ALLOCATORS, Allocator, Candidate, allocate, candidate_for, check_budget

__all__ = ["ALLOCATORS", "Allocator", "Candidate", "allocate", "candidate_for", "check_budget"]

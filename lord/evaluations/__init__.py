"""Evaluations, one module each, registered in ``EVALUATIONS`` (see ``lord.evaluations.base``)."""

from lord.evaluations.base import EVALUATIONS, Evaluation, get_evaluation

__all__ = ["EVALUATIONS", "Evaluation", "get_evaluation"]

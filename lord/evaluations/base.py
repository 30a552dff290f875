"""Evaluations behind one interface: a baseline on the dense model, then the measurement after compression.

An evaluation is one module in this package::

    @EVALUATIONS.register("my_eval")
    class MyEval(Evaluation):
        def baseline(self, ctx): ...            # on the dense model (cache it when that is sound), or None
        def measure(self, ctx, baseline): ...   # on the compressed model: a dict of metrics
        def headline(self, metrics): ...        # one line for the terminal

plus ``conf/eval/my_eval.yaml`` (``name: my_eval`` and its options, read as ``self.options``).
"""

from __future__ import annotations

from typing import ClassVar

from omegaconf import DictConfig, OmegaConf

from lord.registry import Registry

EVALUATIONS: Registry["Evaluation"] = Registry("evaluation", "lord.evaluations")


class Evaluation:
    name: ClassVar[str]
    needs_validation_windows: ClassVar[bool] = False

    def __init__(self, options: DictConfig | dict):
        self.options = OmegaConf.create(options) if isinstance(options, dict) else options

    @property
    def tag(self) -> str:
        """Distinguishes its result file from another evaluation's of the same point ('' for perplexity)."""
        return self.name

    def check_config(self) -> None:
        """Raise ``LordError`` for bad options, before any model loads."""

    def baseline(self, ctx) -> dict | None:
        return None

    def measure(self, ctx, baseline: dict | None) -> dict:
        raise NotImplementedError

    def headline(self, metrics: dict) -> str:
        return ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, (int, float)))


def get_evaluation(options: DictConfig | dict) -> Evaluation:
    return EVALUATIONS.get(options["name"])(options)

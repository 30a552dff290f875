"""Compression as a sequence of stages: ``stages: [calibrate, decompose]`` in the config runs them in order.

A stage is one module in this package::

    @STAGES.register("prune")
    class Prune(Stage):
        def check(self, model): ...              # config errors, on a weightless (meta) model, before loading
        def apply(self, ctx): ...                # change ctx.model; return a record for the result

plus its config group under ``conf/`` (the stage reads its own keys of the run config). Stages see what
earlier ones left in the ``RunContext`` (``ctx.compressor`` holds the calibrate stage's targets,
statistics and bases).
"""

from __future__ import annotations

from typing import ClassVar

import torch.nn as nn
from omegaconf import DictConfig

from lord.registry import Registry

STAGES: Registry["Stage"] = Registry("stage", "lord.stages")


class Stage:
    name: ClassVar[str]

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg  # the whole run config; a stage reads its own group(s)
        self.earlier: list[Stage] = []  # the stages before and after it in this run
        self.later: list[Stage] = []

    @classmethod
    def tag(cls, cfg) -> str:
        """What the result name appends to ``+<stage>`` to tell this stage's settings apart (``cfg``: the run
        config, a DictConfig or the plain dict stored in a result); "" when it has none worth naming."""
        return ""

    def needs_calibration_data(self) -> bool:
        return False

    def uses_layer_selection(self) -> bool:
        """Whether it works on the targets that ``calibrate`` selects (``layers``)."""
        return False

    def check_config(self) -> None:
        """Raise ``LordError`` for what the config alone can tell (its own keys)."""

    def check(self, model: nn.Module) -> None:
        """Raise ``LordError`` for what the config and a weightless copy of the model can tell."""

    def apply(self, ctx) -> dict | None:
        raise NotImplementedError


def build_stages(cfg: DictConfig) -> list[Stage]:
    """The stages named in ``cfg.stages``, in that order, each knowing its neighbours."""
    stages = [STAGES.get(name)(cfg) for name in cfg.stages]
    for i, s in enumerate(stages):
        s.earlier, s.later = stages[:i], stages[i + 1:]
    return stages

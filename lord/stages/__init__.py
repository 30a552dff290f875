"""Compression stages, one module each, registered in ``STAGES`` (see ``lord.stages.base``)."""

from lord.stages.base import STAGES, Stage, build_stages

__all__ = ["STAGES", "Stage", "build_stages"]

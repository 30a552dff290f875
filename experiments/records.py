"""Where a run's result lives and what a config must satisfy before anything runs.

Results: ``results/<experiment>/<model>/<method>[-sequential]/<layers>/<rank>[.<evaluation tag>].json``,
one self-describing JSON per run (config, environment, data, metrics, parameters, timings).
"""

from __future__ import annotations

import re
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationToMissingValueError, MissingMandatoryValue

from lord.architectures import ALL_KINDS
from lord.errors import LordError
from lord.evaluations import EVALUATIONS, get_evaluation
from lord.methods import METHODS
from lord.run_context import DATA_SOURCES
from lord.stages import STAGES, Stage, build_stages


def validate(cfg: DictConfig) -> tuple[list[Stage], object]:
    """Every check that needs no model; returns (stages in order, evaluation). Fails in one line naming the
    bad key and the allowed values."""
    try:
        missing = OmegaConf.missing_keys(cfg)
    except (MissingMandatoryValue, InterpolationToMissingValueError) as e:  # another key interpolates it
        m = re.search(r"Missing mandatory value: (\S+)", str(e))
        missing = {m.group(1) if m else str(e).splitlines()[0]}
    if missing:
        raise LordError(f"missing required value(s): {', '.join(sorted(missing))}; set them on the command line")
    _one_of("method.name", cfg.method.name, METHODS.names())
    _one_of("eval.name", cfg.eval.name, EVALUATIONS.names())
    _one_of("data.name", cfg.data.name, DATA_SOURCES)
    for s in cfg.stages:
        _one_of("stages", s, STAGES.names())
    bad = [k for k in cfg.layers.kinds if k not in ALL_KINDS + ("all",)]
    if bad:
        raise LordError(f"layers.kinds has unknown kind(s) {bad}; allowed: {', '.join(ALL_KINDS + ('all',))}")
    return build_stages(cfg), get_evaluation(cfg.eval)


def _one_of(key: str, value, allowed) -> None:
    if value not in allowed:
        raise LordError(f"{key}={value!r} is unknown; allowed: {', '.join(allowed)}")


def rank_tag(cfg: DictConfig) -> str:
    r = cfg.rank
    tag = f"{r.unit}-{r.value:g}" if isinstance(r.value, (int, float)) else f"{r.unit}-{r.value}"
    return tag + (f"-round{r.round_to}" if r.round_to and int(r.round_to) > 1 else "")


def result_path(cfg: DictConfig, evaluation) -> Path:
    """results/<experiment>/<model>/<method>[-sequential]/<layers>/<rank>[.<tag>].json"""
    model = str(cfg.model.name).replace("/", "--")
    dense = not METHODS.get(cfg.method.name).decomposes
    method = cfg.method.name + ("-sequential" if cfg.calibration.mode == "sequential" else "")
    layers = "none" if dense else cfg.layers.name
    tag = "dense" if dense else rank_tag(cfg)
    suffix = f".{evaluation.tag}" if evaluation.tag else ""
    return Path(cfg.paths.results_dir) / cfg.experiment_name / model / method / layers / f"{tag}{suffix}.json"

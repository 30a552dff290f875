"""The sweep engine: Hydra's multirun with this sweeper (``hydra/sweeper: lord``, the default in conf/).

It launches, through whichever Hydra launcher is configured (basic, joblib, submitit), the cartesian product
of the command line's sweep overrides (as Hydra's basic sweeper does) with the points a preset lists:

    hydra:
      sweeper:
        grid: {method: [lord, svd], rank.value: [25, 50]}   # cartesian product
        plus: [[method=dense]]                              # extra points, launched first (baselines)
        points: [[method=lord, rank.value=10]]              # or an explicit list of points instead
        report: analysis.rank_sweep.report                  # called with the results folder at the end
        artefacts: [main_summary]                           # what analysis.make_all makes from these results

A key set on the command line wins over the same key in a preset point. At the end it logs one summary line
(ran / skipped / failed, with the failed result files), calls the preset's report, and exits 1 if any
job failed.
"""


import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import get_method

from lord.presets import preset_points  # shared with `lord ls`, which counts a preset's points without Hydra

log = logging.getLogger("lord.sweep")


@dataclass
class LordSweeperConf:
    _target_: str = "hydra_plugins.lord_sweeper.lord_sweeper.LordSweeper"
    max_batch_size: Optional[int] = None
    params: Optional[Dict[str, str]] = None
    grid: Dict[str, Any] = field(default_factory=dict)
    plus: List[Any] = field(default_factory=list)
    points: List[Any] = field(default_factory=list)
    report: Optional[str] = None
    artefacts: List[str] = field(default_factory=list)  # read by analysis.make_all (not by the sweep)


ConfigStore.instance().store(group="hydra/sweeper", name="lord", node=LordSweeperConf, provider="lord")


def expand(conf_dir: str, preset: str, command_line=()) -> list:
    """The job configs of a preset's sweep, exactly as this sweeper launches them (no sweeps on the command
    line here: one list of overrides)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    cl = [f"+experiment={preset}", *command_line]
    with initialize_config_dir(config_dir=str(Path(conf_dir).resolve()), version_base="1.3"):
        sw = compose("config", overrides=cl, return_hydra_config=True).hydra.sweeper
        spec = [OmegaConf.to_container(sw[k]) if sw.get(k) else None for k in ("grid", "plus", "points")]
        return [compose("config", overrides=merge(p, cl)) for p in preset_points(*spec)]


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def merge(point: list[str], command_line: list[str]) -> list[str]:
    """A job's overrides: the command line's, plus the point's for keys the command line leaves alone."""
    given = {_key(o) for o in command_line}
    return [*command_line, *(o for o in point if _key(o) not in given)]


def summary(returns: list[dict]) -> tuple[str, list[str]]:
    ran = sum(r.get("status") == "ok" and r.get("outcome") == "ran" for r in returns)
    skipped = sum(r.get("outcome") == "skipped" for r in returns)
    checked = sum(r.get("outcome") == "dry run" for r in returns)
    failed = [r.get("path") or f"({r.get('error')})" for r in returns if r.get("status") != "ok"]
    line = f"sweep: {len(returns)} jobs: {ran} ran, {skipped} skipped (already done), " + (
        f"{checked} checked (dry run), " if checked else "") + f"{len(failed)} failed"
    return line + (": " + ", ".join(failed) if failed else ""), failed


class LordSweeper(BasicSweeper):
    def __init__(self, max_batch_size=None, params=None, grid=None, plus=None, points=None, report=None,
                 artefacts=None):
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.points = preset_points(grid, plus, points)
        self.report = report

    def split_arguments(self, overrides, max_batch_size):  # noqa: D102 (BasicSweeper's, times the points)
        command_line = BasicSweeper.split_arguments(overrides, None)[0]
        jobs = [merge(p, cl) for cl in command_line for p in self.points]
        n = max_batch_size or len(jobs)
        return [jobs[i:i + n] for i in range(0, len(jobs), n)]

    def sweep(self, arguments: List[str]) -> Any:
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        self.overrides = self.split_arguments(parser.parse_overrides([*self._parse_config(), *arguments]),
                                              self.max_batch_size)
        returns, first = [], 0
        while not self.is_done():
            batch = self.get_job_batch()
            self.validate_batch_is_legal(batch)  # every job's config composes, before any job runs
            for job in self.launcher.launch(batch, initial_job_idx=first):
                returns.append(_job_value(job))
            first += len(batch)
        line, failed = summary(returns)
        log.info(line)
        if self.report and not all(r.get("outcome") == "dry run" for r in returns):  # a dry run made no results
            get_method(self.report)(Path(self.config.paths.results_dir) / str(self.config.experiment_name))
        if failed:
            sys.exit(1)
        return returns


def _job_value(job) -> dict:
    """What the task function returned, or a failure record when the job raised past ``run()``."""
    try:
        value = job.return_value
    except Exception as e:  # named in the summary line; the other jobs have run
        return {"status": "failed", "path": f"{' '.join(job.overrides)} ({type(e).__name__}: {e})"}
    return value if isinstance(value, dict) else {"status": "failed", "path": " ".join(job.overrides)}


__all__ = ["LordSweeper", "LordSweeperConf", "expand", "merge", "preset_points", "summary"]

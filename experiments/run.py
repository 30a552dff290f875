"""One run: load the model -> dense baseline -> compression stages -> evaluation -> one JSON result.

    python -m experiments.run model=qwen2.5-coder-0.5b layers=mlp_down method=lord rank.value=30
    python -m experiments.run -m method=lord,svd rank.value=20,50          # a sweep (Hydra multirun)
    python -m experiments.run -m +experiment=fig1_rank_sweep                # a preset's sweep
    python -m experiments.run ... dry_run=true     # the checks before loading, then the targets and ranks only

A run whose result already exists with status "ok" *and the same identity* (lord/identity.py: the config less
operational keys, plus content hashes of the weights and the data) is skipped, so re-running a killed sweep
resumes it and a changed setting is never answered by an old number. A config error (checked before any
weights load) writes nothing and exits 2; a run that fails while computing writes its error into its result
(status "failed") and exits 1; a sweep finishes its other jobs, then names every failure and exits 1.
"""

from __future__ import annotations

import logging
import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from experiments import records
from experiments.cli import CONF, guarded
from lord.cache import CompressionCache
from lord.environment import environment, git_state, pick_device
from lord.errors import LordError
from lord.memory import PeakMemory
from lord.atomic import clean_leftovers, read_json, write_json_atomic
from lord.models import load_model
from lord.params import count_parameters
from lord.run_context import RunContext, RunData, model_key

log = logging.getLogger("lord.run")


def run(cfg: DictConfig) -> dict:
    """Run one configuration and return its result (also written to its result file). A config error raises
    ``LordError`` before anything is written."""
    stages, evaluation = records.validate(cfg)
    git = git_state()
    if cfg.get("dry_run"):  # the checks before loading and the targets with their ranks; nothing loaded or written
        return records.dry_run(cfg, stages, evaluation, git)
    data, identity = records.preflight(cfg, stages, evaluation, git)
    out_path = records.result_path(cfg, evaluation, identity)
    clean_leftovers(out_path.parent)
    clean_leftovers(cfg.paths.cache_dir)
    previous = read_json(out_path)
    if previous is not None and previous.get("status") == "ok":
        if (previous.get("identity") or {}).get("id") != identity["id"]:
            raise LordError(f"{out_path} holds another configuration whose identity starts alike; move it away "
                            "and run again")
        log.info("skip (already done, same identity): %s", out_path)
        if cfg.paths.get("save_dir"):
            log.warning("paths.save_dir=%s was not written: the run was skipped; move %s away to run it again",
                        cfg.paths.save_dir, out_path)
        return {**previous, "path": str(out_path), "outcome": "skipped"}
    result = {"schema": "lord.result/1", "experiment": cfg.experiment_name, "profile": cfg.get("profile_name"),
              "identity": identity, "config": OmegaConf.to_container(cfg, resolve=True),
              "environment": environment(git), "timings": {}}
    if git is not None and git["dirty"] and cfg.paths.get("allow_dirty"):
        result["environment"]["git"]["allow_dirty"] = True  # published from uncommitted code, on purpose
    logger = _start_logger(cfg, out_path)
    try:
        result.update(_execute(cfg, stages, evaluation, data, out_path, result["timings"], identity))
        result.update(status="ok", error=None)
    except Exception as e:  # recorded, not raised: a sweep goes on past one failure
        result.update(status="failed", error=f"{type(e).__name__}: {e}")
        if not isinstance(e, LordError):
            result["traceback"] = traceback.format_exc()
        log.error("run failed: %s", result["error"])
    finally:
        if "status" not in result:  # interrupted (Ctrl-C, SIGTERM from a scheduler): re-run next time
            result.update(status="interrupted", error="the run was interrupted before it finished")
        write_json_atomic(out_path, result)
        _finish_logger(logger, result)
    return {**result, "path": str(out_path), "outcome": "ran"}


@contextmanager
def _timed(timings: dict, key: str):
    t = time.perf_counter()
    yield
    timings[key] = time.perf_counter() - t


def _execute(cfg: DictConfig, stages, evaluation, data: RunData, out_path: Path, timings: dict,
             identity: dict) -> dict:
    torch.manual_seed(cfg.seed)
    with _timed(timings, "load_s"):
        model, tok, info = load_model(cfg.model.name, dtype=cfg.model.dtype, device=pick_device(cfg.model.device),
                                      device_map=cfg.model.device_map, cache_root=cfg.paths.cache_dir)
    data.tokenizer = tok
    ctx = RunContext(cfg, model, tok, info, data=data,
                     cache=CompressionCache(cfg.paths.cache_dir, model_key(cfg, info)),
                     artifacts=out_path.with_suffix(""), timings=timings, identity=identity)
    dense_params = count_parameters(model)

    with _timed(timings, "baseline_s"):
        baseline = evaluation.baseline(ctx)

    memory = {}  # each stage's peak memory (lord.memory): what a compression costs besides time
    for stage in stages:
        with _timed(timings, f"{stage.name}_s"), PeakMemory() as peak:
            ctx.records[stage.name] = stage.apply(ctx)
        memory[stage.name] = peak.record()

    with _timed(timings, "eval_s"):
        metrics = evaluation.measure(ctx, baseline)

    compressed_params = count_parameters(model)
    if cfg.paths.get("save_dir"):
        with _timed(timings, "save_s"):
            _save(cfg, ctx, metrics, out_path, identity, dense_params)
    return {
        "model": {"name": cfg.model.name, **info, "n_params": dense_params, "model_type": model.config.model_type},
        "data": ctx.data.describe(),
        "eval": evaluation.name,
        "metrics": metrics,
        "params": {"dense": dense_params, "compressed": compressed_params,
                   "reduction_percent": 100 * (1 - compressed_params / dense_params)},
        "stages": {name: rec for name, rec in ctx.records.items() if rec is not None},
        "stage_memory": memory,
        **({"compression": ctx.records["decompose"]} if ctx.records.get("decompose") else {}),
    }


def _command() -> str | None:
    """The command line of this run (a sweep job: its own overrides), as the model card states it."""
    from hydra.core.hydra_config import HydraConfig

    from lord.model_card import card_command

    if not HydraConfig.initialized():
        return None
    return card_command("python -m experiments.run", HydraConfig.get().overrides.task)


def _save(cfg: DictConfig, ctx: RunContext, metrics: dict, out_path: Path, identity: dict, dense_params: int) -> None:
    """The compressed model as a Hugging Face checkpoint with a model card (``paths.save_dir``): what was
    measured and on which data, the result file's name under the results folder and its identity."""
    from lord.checkpoint import save_compressed
    from lord.model_card import card_from_source

    method = (ctx.records.get("decompose") or {}).get("method", "none (dense)")
    try:
        result = str(out_path.resolve().relative_to(Path(cfg.paths.results_dir).resolve()))
    except ValueError:
        result = out_path.name
    card = {**card_from_source(ctx.model_info), "method": method, "command": _command(), "result": result,
            "result_identity": identity["id"], "weights": identity["inputs"]["weights"], "dense_params": dense_params,
            "evaluation": {"name": cfg.eval.name, "metrics": metrics, "data": ctx.data.describe(),
                           "options": OmegaConf.to_container(cfg.eval, resolve=True)}}
    path = save_compressed(ctx.model, Path(cfg.paths.save_dir), ctx.decompositions, tokenizer=ctx.tokenizer,
                           card=card)
    log.info("saved the compressed model to %s", path)


def headline(result: dict) -> str:
    """One line summarising a result, whatever its evaluation."""
    from lord.evaluations import EVALUATIONS

    ev = EVALUATIONS.get(result.get("eval", "perplexity"))(result["config"]["eval"])
    return f"{ev.headline(result['metrics'])}, params {result['params']['compressed']:,}"


def _start_logger(cfg: DictConfig, out_path: Path):
    if cfg.logger.name != "wandb":
        return None
    import wandb

    Path(cfg.logger.dir).mkdir(parents=True, exist_ok=True)
    return wandb.init(project=cfg.logger.project, mode=cfg.logger.mode, dir=str(cfg.logger.dir),
                      group=cfg.experiment_name, name=str(out_path.relative_to(cfg.paths.results_dir).with_suffix("")),
                      config=OmegaConf.to_container(cfg, resolve=True), reinit="finish_previous")


def _finish_logger(logger, result: dict) -> None:
    if logger is None:
        return
    try:
        if result.get("status") == "ok":
            flat = {f"metrics/{k}": v for k, v in result["metrics"].items() if isinstance(v, (int, float))}
            flat.update({f"params/{k}": v for k, v in result["params"].items()})
            logger.log(flat)
            import wandb

            logger.log({"summary": wandb.Table(columns=list(flat), data=[list(flat.values())])})
        logger.summary["status"] = result.get("status")
    finally:
        logger.finish()


@hydra.main(version_base="1.3", config_path=str(CONF), config_name="config")
def main(cfg: DictConfig) -> dict:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    single = HydraConfig.get().mode == RunMode.RUN
    try:
        result = run(cfg)
    except LordError as e:  # a config error: nothing ran, nothing was written
        if single:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        return {"status": "failed", "outcome": "config error", "path": None, "error": str(e)}
    if result.get("outcome") == "dry run":
        print(records.describe_dry_run(result))
        return {k: result.get(k) for k in ("status", "outcome", "path", "error")}
    if result["status"] == "ok":
        print(f"{result['path']}: {headline(result)}")
    elif single:  # a run that failed; a sweep reports every failure at its end
        sys.exit(1)
    return {k: result.get(k) for k in ("status", "outcome", "path", "error")}


def cli() -> None:
    """The ``lord-run`` console script."""
    guarded(main)


if __name__ == "__main__":
    cli()

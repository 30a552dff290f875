"""One run: load model -> compress -> evaluate -> exactly one self-describing JSON result.

    python -m experiments.run model=qwen2.5-coder-0.5b layers=mlp_down method=lord rank.value=30
    python -m experiments.run -m method=lord,svd rank.value=20,50        # a sweep (Hydra multirun)

A run whose result already exists with status "ok" is skipped, so re-running a killed sweep resumes it.
A run that fails writes its error into its result (status "failed") and the sweep goes on.
"""

from __future__ import annotations

import sys
import time
import traceback
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from experiments import pipeline
from experiments.cli import guarded
from lord.compress import calibrate, compress_model, plan
from lord import speed
from lord.environment import environment, pick_device
from lord.errors import LordError
from lord.methods import BASIS_FAMILY
from lord.humaneval.evaluate import evaluate_humaneval
from lord.humaneval.sandbox import Limits
from lord.models import load_config_only, load_model
from lord.params import count_parameters, meta_model
from lord.perplexity import evaluate_perplexity


def run(cfg: DictConfig) -> dict:
    """Run one configuration and return its result (also written to ``pipeline.result_path(cfg)``)."""
    pipeline.validate(cfg)
    out_path = pipeline.result_path(cfg)
    previous = pipeline.read_result(out_path)
    if previous is not None and previous.get("status") == "ok":
        print(f"[lord] skip (already done): {out_path}", file=sys.stderr)
        return {**previous, "path": str(out_path)}
    result = {
        "schema": "lord.result/1",
        "experiment": cfg.experiment_name,
        "profile": cfg.get("profile_name"),
        "config": OmegaConf.to_container(cfg, resolve=True),
        "environment": environment(),
        "timings": {},
    }
    logger = _start_logger(cfg, out_path)
    try:
        result.update(_execute(cfg, result["timings"]))
        result["status"] = "ok"
        result["error"] = None
    except Exception as e:  # recorded, not raised: a sweep goes on past one failure
        result["status"] = "failed"
        result["error"] = f"{type(e).__name__}: {e}"
        if not isinstance(e, LordError):
            result["traceback"] = traceback.format_exc()
        print(f"[lord] run failed: {result['error']}", file=sys.stderr)
    finally:
        if "status" not in result:  # interrupted (Ctrl-C, SIGTERM from a scheduler): re-run next time
            result.update(status="interrupted", error="the run was interrupted before it finished")
        pipeline.write_json_atomic(out_path, result)
        _finish_logger(logger, result)
    result["path"] = str(out_path)
    return result


def _execute(cfg: DictConfig, timings: dict) -> dict:
    torch.manual_seed(cfg.seed)
    device = pick_device(cfg.model.device)
    method, ev = cfg.method.name, cfg.eval.name
    comp_cfg = None if method == "dense" else pipeline.compression_config(cfg)
    if comp_cfg is not None:  # selection and ranks checked on a weightless copy before any weights load
        plan(meta_model(load_config_only(cfg.model.name, cfg.paths.cache_dir)), comp_cfg)
    t = time.perf_counter()
    model, tok, model_info = load_model(cfg.model.name, dtype=cfg.model.dtype, device=device,
                                        device_map=cfg.model.device_map, cache_root=cfg.paths.cache_dir)
    timings["load_s"] = time.perf_counter() - t
    dense_params = count_parameters(model)
    targets, _ = plan(model, comp_cfg) if comp_cfg else ([], [])

    t = time.perf_counter()
    need_cal = comp_cfg is not None and method != "svd"
    cal, val, data_desc = pipeline.load_windows(cfg, tok, need_calibration=need_cal,
                                                need_validation=ev == "perplexity")
    timings["data_s"] = time.perf_counter() - t

    dense_eval = None
    if ev == "perplexity":
        dense_file = pipeline.dense_cache_file(cfg, model_info, val)
        dense_eval = pipeline.read_result(dense_file)
        if dense_eval is None:
            dense_eval = evaluate_perplexity(model, val, cfg.eval.batch_size, cfg.eval.chunk_tokens)
            pipeline.write_json_atomic(dense_file, dense_eval)
    elif ev == "speed":  # the dense model, measured in the same process as the compressed one
        t = time.perf_counter()
        dense_eval = speed.measure(model, cfg.eval.seq_lens, cfg.eval.warmup, cfg.eval.runs, cfg.eval.decode_tokens)
        timings["dense_speed_s"] = time.perf_counter() - t

    report = None
    if comp_cfg is not None:
        stats = None
        batches = None if cal is None else list(cal.split(cfg.calibration.batch_size))
        if cal is not None and comp_cfg.calibration == "oneshot":
            stats_file = pipeline.stats_cache_file(cfg, model_info, cal, targets)
            stats = pipeline.cached_stats(stats_file, device)
            timings["calibration_cached"] = stats is not None
            if stats is None:
                t = time.perf_counter()
                stats = calibrate(model, targets, batches, comp_cfg.architecture)
                timings["calibration_s"] = time.perf_counter() - t
                pipeline.store_stats(stats_file, stats, {"model": cfg.model.name, "targets": len(targets)})
        t = time.perf_counter()
        report = _compress(cfg, comp_cfg, model, model_info, targets, cal, batches, stats, timings)
        timings["compress_s"] = time.perf_counter() - t

    t = time.perf_counter()
    metrics = _evaluate(cfg, model, tok, val, dense_eval, report)
    timings["eval_s"] = time.perf_counter() - t
    compressed_params = count_parameters(model)
    out = {
        "model": {"name": cfg.model.name, **model_info, "n_params": dense_params,
                  "model_type": model.config.model_type},
        "data": data_desc,
        "eval": ev,
        "metrics": metrics,
        "params": {"dense": dense_params, "compressed": compressed_params,
                   "reduction_percent": 100 * (1 - compressed_params / dense_params)},
    }
    if report is not None:
        out["compression"] = {
            "method": method, "kinds": list(cfg.layers.kinds), "group": bool(cfg.layers.group),
            "calibration": comp_cfg.calibration, "rank_spec": OmegaConf.to_container(cfg.rank),
            "n_targets": len(report["decompositions"]), "ranks": sorted({d.rank for d in report["decompositions"]}),
            "target_dense_params": report["dense_params"], "target_lowrank_params": report["lowrank_params"],
            "decompositions": [{"name": d.name, "kind": d.kind, "rank": d.rank, "d_in": d.d_in, "d_outs": d.d_outs}
                               for d in report["decompositions"]],
        }
    del model
    return out


# The last run's bases, so that the next rank of a sweep in the same process (experiments.main) is a slice of
# them instead of a new decomposition: {"key": ..., "bases": {target: Basis}}.
_LAST_BASES: dict = {}


def _compress(cfg, comp_cfg, model, model_info, targets, cal, batches, stats, timings) -> dict:
    """compress_model, keeping every basis (float32) for the next run when ``calibration.reuse_bases``."""
    if not cfg.calibration.get("reuse_bases") or comp_cfg.calibration != "oneshot":
        _LAST_BASES.clear()
        return compress_model(model, comp_cfg, batches=batches, stats=stats)
    # bases depend on the weights, the method's basis, the targets and the calibration windows -- not on the
    # rank, and not on the bias rule (lord and lord_meanfix share one basis)
    key = [pipeline.model_key(cfg, model_info), BASIS_FAMILY[comp_cfg.method], [t.name for t in targets],
           None if cal is None else pipeline.tensor_hash(cal)]
    if _LAST_BASES.get("key") == key:
        timings["bases_reused"] = True
        return compress_model(model, comp_cfg, bases=_LAST_BASES["bases"])
    _LAST_BASES.clear()  # free the previous bases before the new ones are computed
    report = compress_model(model, comp_cfg, batches=batches, stats=stats, keep_bases=True)
    _LAST_BASES.update(key=key, bases=report.pop("bases"))
    timings["bases_reused"] = False
    return report


def _evaluate(cfg, model, tok, val, dense_eval, report) -> dict:
    e = cfg.eval
    if e.name == "perplexity":
        m = dense_eval if report is None else evaluate_perplexity(model, val, e.batch_size, e.chunk_tokens)
        m = dict(m)
        m["dense_perplexity"] = dense_eval["perplexity"]
        m["perplexity_increase_percent"] = 100 * (m["perplexity"] / dense_eval["perplexity"] - 1)
        return m
    if e.name == "humaneval":
        out_dir = pipeline.result_path(cfg).with_suffix("")
        he = evaluate_humaneval(model, tok, out_dir, preset=e.preset, limit=e.limit,
                                task_ids=None if e.task_ids is None else list(e.task_ids), seeds=list(e.seeds),
                                batch_size=e.batch_size, chat_template=e.chat_template,
                                max_new_tokens=e.max_new_tokens, n=e.n, limits=Limits(timeout_s=e.timeout_s),
                                workers=e.workers)
        return {k: v for k, v in he.items() if k != "per_seed"} | {
            "per_seed": [{k: v for k, v in s.items() if k != "per_task"} for s in he["per_seed"]],
            "per_task": he["per_seed"][0]["per_task"]}
    if e.name == "speed":
        decs = [] if report is None else report["decompositions"]
        comp = speed.measure(model, e.seq_lens, e.warmup, e.runs, e.decode_tokens, decompositions=decs)
        return {"dense": dense_eval, "compressed": comp, "relative": speed.relative(dense_eval, comp)}
    raise LordError(f"eval.name={e.name!r} is unknown")


def _start_logger(cfg: DictConfig, out_path):
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


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    result = run(cfg)
    if result["status"] == "ok":
        print(f"{result['path']}: {pipeline.headline(result)}")


if __name__ == "__main__":
    guarded(main)

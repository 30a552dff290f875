"""The steps of one run, each small and cached where a sweep would otherwise repeat it.

Caches (all under ``paths.cache_dir``, safe to delete):

* ``windows/`` — tokenised windows per (tokenizer, corpus, length);
* ``stats/`` — oneshot calibration statistics per (model, calibration windows, targets): every rank and
  every data-aware method of a sweep reuses them;
* ``dense/`` — the dense model's perplexity per (model, validation windows).
"""

from __future__ import annotations

import hashlib
import json
import re
import os
import tempfile
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationToMissingValueError, MissingMandatoryValue

from lord.architectures import ALL_KINDS
from lord.calibration import load_statistics, save_statistics
from lord.compress import CALIBRATION_MODES, CompressionConfig
from lord.corpora import (folder_corpus, stdlib_corpus, take_windows, the_stack_calibration, the_stack_smol,
                          tokenize_windows)
from lord.errors import LordError
from lord.methods import METHODS
from lord.ranks import RankSpec

DATA_SOURCES = ("stdlib", "the-stack-smol", "folder")
EVALS = ("perplexity", "humaneval", "speed")


def validate(cfg: DictConfig) -> None:
    """Every check that needs no model: fails in one line naming the bad key and the allowed values."""
    try:
        missing = OmegaConf.missing_keys(cfg)
    except (MissingMandatoryValue, InterpolationToMissingValueError) as e:  # another key interpolates it
        m = re.search(r"Missing mandatory value: (\S+)", str(e))
        missing = {m.group(1) if m else str(e).splitlines()[0]}
    if missing:
        raise LordError(f"missing required value(s): {', '.join(sorted(missing))}; set them on the command line")
    if cfg.method.name not in METHODS + ("dense",):
        raise LordError(f"method.name={cfg.method.name!r} is unknown; allowed: {', '.join(METHODS + ('dense',))}")
    bad = [k for k in cfg.layers.kinds if k not in ALL_KINDS + ("all",)]
    if bad:
        raise LordError(f"layers.kinds has unknown kind(s) {bad}; allowed: {', '.join(ALL_KINDS + ('all',))}")
    if cfg.data.name not in DATA_SOURCES:
        raise LordError(f"data.name={cfg.data.name!r} is unknown; allowed: {', '.join(DATA_SOURCES)}")
    if cfg.eval.name not in EVALS:
        raise LordError(f"eval.name={cfg.eval.name!r} is unknown; allowed: {', '.join(EVALS)}")
    if cfg.calibration.mode not in CALIBRATION_MODES:
        raise LordError(f"calibration.mode={cfg.calibration.mode!r} is unknown; allowed: {', '.join(CALIBRATION_MODES)}")
    rank_spec(cfg)


def rank_spec(cfg: DictConfig) -> RankSpec:
    r = cfg.rank
    try:
        return RankSpec(unit=r.unit, value=r.value, round_to=int(r.round_to), force=bool(r.force))
    except LordError as e:
        raise LordError(f"rank: {e}") from None


def compression_config(cfg: DictConfig) -> CompressionConfig:
    arch = OmegaConf.to_container(cfg.architecture, resolve=True) if cfg.get("architecture") else None
    return CompressionConfig(method=cfg.method.name, kinds=list(cfg.layers.kinds), rank=rank_spec(cfg),
                             group=bool(cfg.layers.group),
                             layers=None if cfg.layers.indices is None else list(cfg.layers.indices),
                             calibration=cfg.calibration.mode, architecture=arch)


def rank_tag(cfg: DictConfig) -> str:
    r = cfg.rank
    tag = f"{r.unit}-{r.value:g}" if isinstance(r.value, (int, float)) else f"{r.unit}-{r.value}"
    return tag + (f"-round{r.round_to}" if r.round_to and int(r.round_to) > 1 else "")


def result_path(cfg: DictConfig) -> Path:
    """results/<experiment>/<model>/<method>[-sequential]/<layers>/<rank>.json"""
    model = str(cfg.model.name).replace("/", "--")
    method = cfg.method.name + ("-sequential" if cfg.calibration.mode == "sequential" else "")
    layers = cfg.layers.name
    tag = "dense" if cfg.method.name == "dense" else rank_tag(cfg)
    if cfg.method.name == "dense":
        layers = "none"
    ev = cfg.eval.name if cfg.eval.name != "humaneval" else f"humaneval-{cfg.eval.preset}"
    suffix = "" if ev == "perplexity" else f".{ev}"
    return Path(cfg.paths.results_dir) / cfg.experiment_name / model / method / layers / f"{tag}{suffix}.json"


def headline(result: dict) -> str:
    """One line summarising a result, whatever its evaluation."""
    m, params = result["metrics"], f"params {result['params']['compressed']:,}"
    if result.get("eval", "perplexity") == "perplexity":
        return (f"perplexity {m['perplexity']:.4f} (dense {m['dense_perplexity']:.4f}, "
                f"{m['perplexity_increase_percent']:+.2f}%), {params}")
    if result["eval"] == "humaneval":
        return ", ".join(f"{k} {v['mean']:.2f}" for k, v in m.items() if k.startswith("pass@")) + f", {params}"
    rel = m["relative"]
    return (", ".join(f"{r['seq_len']} tokens x{r['speedup']:.3f}" for r in rel["forward"])
            + f", decode x{rel['decode']['speedup']:.3f}, {params}")


def _corpora(cfg: DictConfig):
    d = cfg.data
    if d.name == "stdlib":
        return stdlib_corpus("calibration", d.validation_percent), stdlib_corpus("validation", d.validation_percent)
    if d.name == "the-stack-smol":
        val = the_stack_smol(d.source)
        cal = the_stack_calibration(val, n_files=4 * int(cfg.calibration.n_windows), min_chars=d.min_chars,
                                    source=d.calibration_source, token=os.environ.get("HF_TOKEN"))
        return cal, val
    return folder_corpus(d.calibration_path, "calibration"), folder_corpus(d.path, "validation")


def load_windows(cfg: DictConfig, tokenizer, need_calibration: bool, need_validation: bool = True):
    """(calibration windows or None, validation windows or None, data description)."""
    d = cfg.data
    if not (need_calibration or need_validation):
        return None, None, None
    cal_c, val_c = _corpora(cfg)
    cache = Path(cfg.paths.cache_dir) / "windows"
    kw = dict(seq_len=d.seq_len, min_chars=d.min_chars, all_windows=d.all_windows, cache_dir=cache)
    val = None
    if need_validation:
        val = take_windows(tokenize_windows(val_c, tokenizer, **kw), cfg.eval.n_windows, "validation windows")
    cal = None
    if need_calibration:
        cal = take_windows(tokenize_windows(cal_c, tokenizer, **kw), cfg.calibration.n_windows, "calibration windows")
    desc = {"validation": val_c.describe() if need_validation else None,
            "calibration": cal_c.describe() if need_calibration else None,
            "seq_len": d.seq_len, "min_chars": d.min_chars, "all_windows": d.all_windows,
            "validation_windows": None if val is None else int(val.shape[0]),
            "calibration_windows": None if cal is None else int(cal.shape[0])}
    return cal, val, desc


def tensor_hash(t: torch.Tensor) -> str:
    return hashlib.sha256(t.numpy().tobytes()).hexdigest()[:16]


def model_key(cfg: DictConfig, model_info: dict) -> str:
    ident = model_info.get("gguf_sha256") or model_info.get("path") or cfg.model.name
    return f"{cfg.model.name}|{ident}|{cfg.model.dtype}"


def stats_cache_file(cfg, model_info, cal: torch.Tensor, targets) -> Path:
    key = json.dumps([model_key(cfg, model_info), tensor_hash(cal), [t.name for t in targets], "oneshot"])
    return Path(cfg.paths.cache_dir) / "stats" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.safetensors"


def cached_stats(path: Path, device):
    return load_statistics(path, device=device) if path.is_file() else None


def store_stats(path: Path, stats, meta: dict) -> None:
    save_statistics(stats, path, meta)


def dense_cache_file(cfg, model_info, val: torch.Tensor) -> Path:
    key = json.dumps([model_key(cfg, model_info), tensor_hash(val), cfg.eval.batch_size])
    return Path(cfg.paths.cache_dir) / "dense" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"


def write_json_atomic(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True, default=str)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_result(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None

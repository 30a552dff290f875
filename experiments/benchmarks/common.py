"""Shared helpers for benchmark scripts: their common arguments, stdlib windows, peak memory, JSON output."""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
from pathlib import Path

from lord.corpora import stdlib_corpus, take_windows, tokenize_windows
from lord.environment import environment
from lord.zoo import cache_root

OUT_DIR = Path(__file__).resolve().parents[2] / "results" / "benchmarks"
log = logging.getLogger("lord.benchmarks")


def parser(doc: str, model: str | None = "qwen2.5-coder-0.5b", kinds: list[str] | None = None,
           windows: int | None = None) -> argparse.ArgumentParser:
    """An argument parser described by the script's docstring, with the options most scripts share."""
    ap = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    if model is not None:
        ap.add_argument("--model", default=model, help="an offline zoo name, a model directory or a hub id")
    if kinds is not None:
        ap.add_argument("--kinds", nargs="+", default=kinds, help="layer kinds (mlp_down, all, ...)")
        ap.add_argument("--group", action="store_true", help="q/k/v and gate/up share one bottleneck")
    if windows is not None:
        ap.add_argument("--windows", type=positive_int, default=windows, help="calibration windows (1,024 tokens)")
        ap.add_argument("--batch-size", type=positive_int, default=4)
    return ap


def positive_int(text: str) -> int:
    """argparse type: a positive integer (checked before any model loads)."""
    if not text.isdigit() or int(text) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive integer")
    return int(text)


def reduction(text: str) -> float:
    """argparse type: a % rank reduction in [0, 100)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 <= value < 100:
        raise argparse.ArgumentTypeError(f"{text!r} must be a % rank reduction in [0, 100)")
    return value


def stdlib_windows(tokenizer, split: str, n: int, seq_len: int = 1024):
    corpus = stdlib_corpus(split)
    w = tokenize_windows(corpus, tokenizer, seq_len=seq_len, cache_dir=cache_root() / "windows")
    return take_windows(w, n), corpus.describe()


def peak_rss_gib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def write(name: str, payload: dict) -> Path:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / f"{name}.json"
    module = getattr(sys.modules["__main__"].__spec__, "name", "experiments.benchmarks")
    payload = {"benchmark": name, "command": " ".join(["python -m", module, *sys.argv[1:]]),
               **payload, "environment": environment()}
    path.write_text(json.dumps(payload, indent=2, default=str))
    print(json.dumps({k: v for k, v in payload.items() if k != "environment"}, indent=2, default=str))
    log.info("wrote %s", path)
    return path

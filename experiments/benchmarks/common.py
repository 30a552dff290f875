"""Shared helpers for benchmark scripts: stdlib windows for a tokenizer, peak memory, JSON output."""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path

from lord.corpora import stdlib_corpus, take_windows, tokenize_windows
from lord.environment import environment
from lord.zoo import cache_root

OUT_DIR = Path(__file__).resolve().parents[2] / "results" / "benchmarks"


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
    print(f"wrote {path}")
    return path

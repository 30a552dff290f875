"""Fetch and convert the Qwen zoo models, then time loading and measure perplexity (issue: offline zoo).

    python -m experiments.benchmarks.zoo [--windows 8]

Writes results/benchmarks/zoo.json. A model already in the cache is not fetched again; its recorded
fetch/convert times are those of the first fetch (from lord_zoo.json).

Time: ~9 min on a 2-core CPU, measured (first fetch 8 s + 26 s, conversion 65 s + 123 s, perplexity ~100 s + ~195 s:
zoo.json)
"""

from __future__ import annotations

import time

import torch

from experiments.cli import guarded
from experiments.benchmarks.common import parser, stdlib_windows, write
from lord import zoo
from lord.models import load_model
from lord.perplexity import evaluate_perplexity


def main():
    ap = parser(__doc__, model=None)
    ap.add_argument("--models", nargs="+", default=["qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"])
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=1024)
    args = ap.parse_args()
    rows = []
    for name in args.models:
        t = time.perf_counter()
        zoo.fetch(name)
        fetch_call_s = time.perf_counter() - t
        info = zoo.zoo_info(name)
        t = time.perf_counter()
        model, tok, _ = load_model(name)
        load_s = time.perf_counter() - t
        val, desc = stdlib_windows(tok, "validation", args.windows, args.seq_len)
        ppl = evaluate_perplexity(model, val, batch_size=2)
        rows.append({
            "model": name, "origin": info["origin"], "gguf_file_type": info["gguf_file_type"],
            "gguf_sha256": info["gguf_sha256"], "first_fetch_s": info["fetch_seconds"],
            "first_convert_s": info["convert_seconds"], "this_fetch_call_s": round(fetch_call_s, 3),
            "load_from_cache_s": round(load_s, 2), "n_params": sum(p.numel() for p in model.parameters()),
            "perplexity": ppl["perplexity"], "n_tokens": ppl["n_tokens"], "seq_len": args.seq_len,
            "tokens_per_second": ppl["tokens_per_second"], "validation": desc,
        })
        del model
    write("zoo", {"threads": torch.get_num_threads(), "models": rows})


if __name__ == "__main__":
    guarded(main)

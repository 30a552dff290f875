"""The three evaluators on one model (issue: evaluation), written to results/benchmarks/evaluation-<model>.json.

    python -m experiments.benchmarks.evaluation --model qwen2.5-coder-0.5b

1. perplexity on the offline validation split (1,024-token windows);
2. greedy HumanEval pass@1 on all 164 problems (batched) with its wall time, and the batched / one-prompt-
   at-a-time generation speed ratio measured on the first ``--ratio-problems`` problems;
3. the speed and size table for the dense model and for ``mlp_down`` decomposed (LoRD) at 50 % rank
   reduction, measured in the same process.

Time: ~33 min on a 2-core CPU, measured (qwen2.5-coder-0.5b; greedy HumanEval is 17 min of it)
"""

from __future__ import annotations

import copy
import tempfile
import time

import torch

from experiments.cli import guarded
from experiments.benchmarks.common import OUT_DIR, parser, stdlib_windows, write
from lord import speed
from lord.compress import CompressionConfig, compress_model
from lord.humaneval.evaluate import evaluate_humaneval
from lord.models import load_model
from lord.perplexity import evaluate_perplexity
from lord.ranks import RankSpec


def main():
    ap = parser(__doc__)
    ap.add_argument("--ppl-windows", type=int, default=8)
    ap.add_argument("--limit", type=int, default=None, help="HumanEval problems (default: all 164)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--ratio-problems", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=384)
    ap.add_argument("--speed-runs", type=int, default=10)
    ap.add_argument("--calibration-windows", type=int, default=16)
    args = ap.parse_args()
    model, tok, info = load_model(args.model)
    out = {"model": args.model, "gguf_file_type": info.get("gguf_file_type"), "threads": torch.get_num_threads()}

    val, desc = stdlib_windows(tok, "validation", args.ppl_windows)
    out["perplexity"] = {**evaluate_perplexity(model, val, batch_size=2), "validation": desc}

    he_dir = OUT_DIR / f"humaneval-{args.model}"
    t = time.perf_counter()
    he = evaluate_humaneval(model, tok, he_dir, preset="greedy", limit=args.limit, batch_size=args.batch_size,
                            max_new_tokens=args.max_new_tokens)
    he["wall_s"] = time.perf_counter() - t
    out["humaneval_greedy"] = {k: v for k, v in he.items() if k != "per_seed"} | {
        "samples_file": he["per_seed"][0]["samples_file"], "results_file": he["per_seed"][0]["results_file"]}
    ratio = {}
    for bs in (1, args.batch_size):
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            evaluate_humaneval(model, tok, tmp, preset="greedy", limit=args.ratio_problems, batch_size=bs,
                               max_new_tokens=args.max_new_tokens)
            ratio[f"batch_{bs}_s"] = time.perf_counter() - t
    ratio["speedup"] = ratio["batch_1_s"] / ratio[f"batch_{args.batch_size}_s"]
    ratio["problems"] = args.ratio_problems
    out["humaneval_batching"] = ratio

    cal, _ = stdlib_windows(tok, "calibration", args.calibration_windows)
    comp = copy.deepcopy(model)
    rep = compress_model(comp, CompressionConfig(method="lord", kinds=["mlp_down"], rank=RankSpec("reduction", 50)),
                         batches=list(cal.split(4)))
    dense_speed = speed.measure(model, runs=args.speed_runs)
    comp_speed = speed.measure(comp, runs=args.speed_runs, decompositions=rep["decompositions"])
    out["speed"] = {"dense": dense_speed, "lord_mlp_down_50": comp_speed,
                    "relative": speed.relative(dense_speed, comp_speed)}
    write(f"evaluation-{args.model}", out)


if __name__ == "__main__":
    guarded(main)

"""Cost of calibration relative to a plain forward pass, and peak memory of compressing a model.

    python -m experiments.benchmarks.calibration --model qwen2.5-coder-0.5b --kinds mlp_down --windows 8
    python -m experiments.benchmarks.calibration --model qwen2.5-coder-1.5b --kinds all --group --windows 4

Writes results/benchmarks/calibration-<model>-<kinds>.json: plain-forward time over the calibration
windows (with logits, as a user would run the model), calibration time over the same windows, their
ratio, time to decompose and replace every target, and the process's peak resident memory.
"""

from __future__ import annotations

import argparse
import time

import torch

from experiments.cli import guarded
from experiments.benchmarks.common import peak_rss_gib, stdlib_windows, write
from lord.compress import CompressionConfig, calibrate, compress_model, plan
from lord.models import load_model
from lord.ranks import RankSpec


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--kinds", nargs="+", default=["mlp_down"])
    ap.add_argument("--group", action="store_true")
    ap.add_argument("--method", default="lord")
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--reduction", type=float, default=50)
    args = ap.parse_args()
    model, tok, info = load_model(args.model)
    rss_loaded = peak_rss_gib()
    cal, desc = stdlib_windows(tok, "calibration", args.windows)
    batches = list(cal.split(args.batch_size))
    t = time.perf_counter()
    with torch.inference_mode():
        for b in batches:
            model(input_ids=b, use_cache=False)
    forward_s = time.perf_counter() - t
    cfg = CompressionConfig(method=args.method, kinds=args.kinds, group=args.group,
                            rank=RankSpec("reduction", args.reduction, force=True))
    targets, _ = plan(model, cfg)
    t = time.perf_counter()
    stats = calibrate(model, targets, batches)
    calib_s = time.perf_counter() - t
    stats_bytes = sum(m.sum_vv.numel() * 8 for m in stats.values())
    t = time.perf_counter()
    compress_model(model, cfg, stats=stats)  # each target: basis, factors, replacement, then freed
    compress_s = time.perf_counter() - t
    write(f"calibration-{args.model}-{'-'.join(args.kinds)}{'-grouped' if args.group else ''}", {
        "model": args.model, "gguf_file_type": info.get("gguf_file_type"), "kinds": args.kinds, "group": args.group,
        "method": args.method, "n_targets": len(targets), "calibration_windows": args.windows,
        "tokens": int(cal.numel()), "plain_forward_s": forward_s, "calibration_s": calib_s,
        "calibration_over_forward": calib_s / forward_s, "decomposition_s": compress_s,
        "statistics_mib": stats_bytes / 2**20, "peak_rss_after_load_gib": rss_loaded,
        "peak_rss_gib": peak_rss_gib(), "threads": torch.get_num_threads(), "calibration_data": desc,
    })


if __name__ == "__main__":
    guarded(main)

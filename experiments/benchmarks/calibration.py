"""Cost of calibration relative to a plain forward pass, and peak memory of compressing a model.

    python -m experiments.benchmarks.calibration --model qwen2.5-coder-0.5b --kinds mlp_down --windows 8
    python -m experiments.benchmarks.calibration --model qwen2.5-coder-1.5b --kinds all --group --windows 4

Writes results/benchmarks/calibration-<model>-<kinds>.json: plain-forward time over the calibration
windows (with logits, as a user would run the model), calibration time over the same windows, their
ratio, time to decompose and replace every target, and the process's peak resident memory.

Time: ~2.5 min on a 2-core CPU, measured (0.5B, mlp_down, 8 windows); ~12 min on a 2-core CPU, measured (1.5B, all
kinds grouped, 4 windows)
"""

from __future__ import annotations

import time

import torch

from experiments.cli import guarded
from experiments.benchmarks.common import parser, peak_rss_gib, stdlib_windows, write
from lord.compress import Compressor
from lord.models import load_model
from lord.ranks import RankSpec


def main():
    ap = parser(__doc__, kinds=["mlp_down"], windows=8)
    ap.add_argument("--method", default="lord")
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
    compressor = Compressor(model, args.kinds, args.group, batches=batches)
    targets = compressor.targets
    t = time.perf_counter()
    stats = compressor.statistics
    calib_s = time.perf_counter() - t
    stats_bytes = sum(m.sum_vv.numel() * 8 for m in stats.values())
    t = time.perf_counter()
    compressor.apply(args.method, RankSpec("reduction", args.reduction, force=True))  # each basis applied, then freed
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

"""HumanEval generation throughput: one prompt at a time vs batches that wait for their slowest row vs
continuous batching (and, sampling, continuous batching with one shared prefill per task), in one run.

    python -m experiments.benchmarks.humaneval_throughput [--model qwen2.5-coder-0.5b] [--problems 32]
    python -m experiments.benchmarks.humaneval_throughput --mode sampled [--problems 32] [--samples 10]

``--mode greedy`` (the default): the greedy preset (stop at the first unindented line) on the first
``--problems`` prompts, in three modes: one prompt at a time (continuous batching with one row: no padding, no
batching), static batches of ``--batch-size`` that run until their slowest row stops, continuous batching.
``--mode sampled``: the code_eval preset (``--samples`` per task, T = 0.2, top-p 0.95, stop at the first blank
line, ``--max-new-tokens`` 512), in three modes: one sample at a time (each prefills its prompt), continuous
batching where each sample prefills its prompt, and continuous batching where a task's samples share one
prefill (``lord.humaneval.batching``). Every mode writes its samples through ``generate_samples`` to a
temporary file.

Records, per mode, wall time, samples/s, generated tokens/s, the speedup over one at a time, the batching counts
(padding, prefills, rows per step) and how many samples equal the one-at-a-time ones; for sampling also how many
samples differ between shared and unshared prefill (float32 rounding flips a token at a near-tie, nothing else
can differ). And the time of one decode step by the number of rows (``--widths``: what batching can buy on this
machine at all) with the width ``lord.humaneval.width`` chooses from it, which ``--batch-size auto`` uses.
Writes results/benchmarks/humaneval-throughput-<model>-<problems>.json (greedy) or
humaneval-throughput-sampled-<model>-<problems>x<samples>.json.

Time: ~15 min on a 2-core CPU, measured (greedy, --problems 64: the three modes 852 s)
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

from experiments.benchmarks.common import parser, positive_int, write
from lord.humaneval.evaluate import load_problems
from lord.humaneval.generate import generate_samples, get_preset
from lord.humaneval.width import TOLERANCE, WIDTHS, choose_width, measure_decode_curve, tokens_per_s
from lord.models import load_model


def width_arg(text: str) -> int | str:
    """argparse type: a positive number of rows, or auto."""
    return text if text == "auto" else positive_int(text)


def modes(mode: str, width: int) -> dict[str, tuple[int, str, bool]]:
    """name -> (rows, batching, share_prefix)."""
    if mode == "greedy":
        return {"one_at_a_time": (1, "auto", False), "static": (width, "static", False),
                "continuous": (width, "auto", False)}
    return {"one_at_a_time": (1, "auto", False), "continuous": (width, "auto", False),
            "continuous_shared": (width, "auto", True)}


def main() -> int:
    ap = parser(__doc__)
    ap.add_argument("--mode", choices=("greedy", "sampled"), default="greedy")
    ap.add_argument("--problems", type=positive_int, default=32)
    ap.add_argument("--samples", type=positive_int, default=10, help="samples per task (--mode sampled)")
    ap.add_argument("--batch-size", type=width_arg, default=None,
                    help="rows per batch, or auto (chosen from the measured decode curve); default: 16 greedy, "
                         "auto sampled")
    ap.add_argument("--max-new-tokens", type=positive_int, default=None, help="default: 384 greedy, 512 sampled")
    ap.add_argument("--widths", type=positive_int, nargs="+", default=list(WIDTHS),
                    help="rows at which one decode step is timed")
    args = ap.parse_args()
    sampled = args.mode == "sampled"
    batch_size = args.batch_size or ("auto" if sampled else 16)
    preset = get_preset("code_eval", n=args.samples, max_new_tokens=args.max_new_tokens or 512) if sampled else \
        get_preset("greedy", max_new_tokens=args.max_new_tokens or 384)
    problems = load_problems(args.problems)
    model, tok, info = load_model(args.model)

    queue = preset.n * len(problems)
    t = time.perf_counter()
    steps = measure_decode_curve(model, sorted(set(args.widths)))
    fitting = {w: ms for w, ms in steps.items() if w <= queue} or {min(steps): steps[min(steps)]}
    chosen = choose_width(fitting)
    width = chosen if batch_size == "auto" else batch_size
    curve = {"decode_step_ms_by_rows": steps, "decode_tokens_per_s_by_rows": tokens_per_s(steps),
             "decode_curve_s": time.perf_counter() - t,
             "width_chosen": {"batch_size": chosen, "tolerance": TOLERANCE, "queue": queue,
                              "rule": "the narrowest measured width <= the samples to generate whose tokens/s is "
                                      "within the tolerance of the best"}}

    runs, raw = {}, {}
    for name, (rows, batching, share) in modes(args.mode, width).items():
        with tempfile.TemporaryDirectory() as tmp:
            stats: dict = {}
            t = time.perf_counter()
            samples = generate_samples(model, tok, problems, preset, Path(tmp) / "s.jsonl", batch_size=rows,
                                       progress=False, stats=stats, batching=batching, share_prefix=share)
            wall = time.perf_counter() - t
        raw[name] = {(s["task_id"], s["sample"]): s["raw"] for s in samples}
        tokens = sum(len(tok(s["raw"], add_special_tokens=False).input_ids) for s in samples)
        runs[name] = {"batch_size": rows, "wall_s": wall, "samples": len(samples), "samples_per_s": len(samples) / wall,
                      "generated_tokens_retokenised": tokens, "tokens_per_s": tokens / wall, **stats}
    base = runs["one_at_a_time"]["wall_s"]
    for name, r in runs.items():
        r["speedup_over_one_at_a_time"] = base / r["wall_s"]
        r["samples_equal_to_one_at_a_time"] = sum(raw[name][k] == raw["one_at_a_time"][k] for k in raw[name])
    payload = {**curve, "model": args.model, "gguf_file_type": info.get("gguf_file_type"), "mode": args.mode,
               "problems": len(problems), "preset": preset.__dict__, "threads": torch.get_num_threads(),
               "runs": runs}
    if sampled:
        differ = sum(raw["continuous_shared"][k] != raw["continuous"][k] for k in raw["continuous"])
        payload["near_tie_flips"] = {"samples_differing_shared_vs_unshared": differ, "samples": queue,
                                     "fraction": differ / queue}
    name = f"humaneval-throughput-{args.model}-{len(problems)}" if not sampled else \
        f"humaneval-throughput-sampled-{args.model}-{len(problems)}x{preset.n}"
    write(name.replace("/", "--"), payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())

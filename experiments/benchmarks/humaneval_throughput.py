"""HumanEval generation throughput: one prompt at a time vs batches that wait for their slowest row vs
continuous batching, on the same problems in one run.

    python -m experiments.benchmarks.humaneval_throughput [--model qwen2.5-coder-0.5b] [--problems 32]

Greedy preset (stop at the first unindented line), the first ``--problems`` HumanEval prompts. Each mode writes
its samples to a temporary file through ``generate_samples``; one prompt at a time is continuous batching
with one row (no padding, no batching). Records wall time, generated tokens per second, the speedup over one
prompt at a time, the padding waste, and how many completions equal the one-at-a-time ones (greedy: they may
differ only after a near-tie of the top two logits), and the time of one decode step by the number of rows
(what batching can buy on this machine at all). Writes results/benchmarks/humaneval-throughput-<model>-<problems>.json.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

from experiments.benchmarks.common import parser, write
from lord.humaneval.evaluate import load_problems
from lord.humaneval.generate import generate_samples, get_preset
from lord.models import load_model


@torch.inference_mode()
def decode_step_ms(model, rows: int, context: int = 300, steps: int = 6) -> float:
    """Median wall time of one decode step of ``rows`` rows over a ``context``-token cache (random tokens)."""
    from transformers import DynamicCache

    g = torch.Generator().manual_seed(0)
    cache = DynamicCache(config=model.config)
    model(input_ids=torch.randint(0, 1000, (rows, context), generator=g), past_key_values=cache, use_cache=True)
    last, mask, times = torch.zeros(rows, 1, dtype=torch.long), torch.ones(rows, context + 1, dtype=torch.long), []
    for _ in range(steps):
        t = time.perf_counter()
        model(input_ids=last, attention_mask=mask, position_ids=mask.sum(1, keepdim=True) - 1, past_key_values=cache,
              use_cache=True)
        times.append(time.perf_counter() - t)
        mask = torch.cat([mask, mask.new_ones(rows, 1)], 1)
    return 1000 * sorted(times)[len(times) // 2]


def main() -> int:
    ap = parser(__doc__)
    ap.add_argument("--problems", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=384)
    args = ap.parse_args()
    model, tok, info = load_model(args.model)
    problems = load_problems(args.problems)
    preset = get_preset("greedy", max_new_tokens=args.max_new_tokens)
    modes = {"one_at_a_time": (1, "auto"), "static": (args.batch_size, "static"),
             "continuous": (args.batch_size, "auto")}
    runs, completions = {}, {}
    for name, (batch_size, batching) in modes.items():
        with tempfile.TemporaryDirectory() as tmp:
            stats: dict = {}
            t = time.perf_counter()
            samples = generate_samples(model, tok, problems, preset, Path(tmp) / "s.jsonl", batch_size=batch_size,
                                       progress=False, stats=stats, batching=batching)
            wall = time.perf_counter() - t
        completions[name] = {s["task_id"]: s["completion"] for s in samples}
        tokens = sum(len(tok(s["raw"], add_special_tokens=False).input_ids) for s in samples)
        runs[name] = {"batch_size": batch_size, "wall_s": wall, "generated_tokens_retokenised": tokens,
                      "tokens_per_s": tokens / wall, **stats}
    base = runs["one_at_a_time"]["wall_s"]
    for name, r in runs.items():
        r["speedup_over_one_at_a_time"] = base / r["wall_s"]
        r["completions_equal_to_one_at_a_time"] = sum(
            completions[name][t] == completions["one_at_a_time"][t] for t in problems)
    steps = {rows: decode_step_ms(model, rows) for rows in (1, 2, 4, 8, 16)}
    write(f"humaneval-throughput-{args.model}-{len(problems)}", {
        "decode_step_ms_by_rows": steps, "decode_tokens_per_s_by_rows": {r: 1000 * r / ms for r, ms in steps.items()},
        "model": args.model, "gguf_file_type": info.get("gguf_file_type"), "problems": len(problems),
        "preset": preset.__dict__, "threads": torch.get_num_threads(), "runs": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Wall time to judge the 164 canonical HumanEval solutions: kernel isolation (namespaces) vs the guard alone.

    python -m experiments.benchmarks.sandbox_overhead [--workers 2] [--repeats 1]

Both paths use the same verdict (record, execute, replay), so the difference is the isolation's cost:
bubblewrap's namespaces and mounts per execution. The modes alternate within a repeat, on one machine in
one run. Writes results/benchmarks/sandbox-overhead.json; every verdict must be a pass (exit 1 otherwise).

Time: ~3 min on a 2-core CPU, measured (--repeats 2: four passes of ~40 s)
"""

from __future__ import annotations

import os
import sys
import time

from experiments.benchmarks.common import parser, write
from lord.humaneval.evaluate import load_problems
from lord.humaneval.sandbox import Judge, Limits


def main() -> int:
    ap = parser(__doc__, model=None)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    problems = load_problems()
    items = [(t, p["canonical_solution"]) for t, p in problems.items()]
    runs, failed = {"namespaces": [], "guard-only": []}, []
    described = {}
    load_before = os.getloadavg()
    for _ in range(args.repeats):
        for mode in runs:
            with Judge(problems, Limits(timeout_s=20), isolation=mode) as judge:
                described[mode] = judge.describe()
                t0 = time.perf_counter()
                verdicts = judge.judge_all(items, workers=args.workers, progress=False)
                runs[mode].append(time.perf_counter() - t0)
            failed += [f"{mode}: {t} {v['outcome']}" for (t, _), v in zip(items, verdicts) if not v["passed"]]
    best = {mode: min(times) for mode, times in runs.items()}
    write("sandbox-overhead", {
        "tasks": len(items), "workers": args.workers, "repeats": args.repeats, "wall_s": runs,
        "per_sample_ms": {m: 1000 * best[m] / len(items) for m in best},
        "namespaces_over_guard": best["namespaces"] / best["guard-only"],
        "isolation": described, "failed": failed,
        "load_average_1_5_15": {"before": load_before, "after": os.getloadavg()}})
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

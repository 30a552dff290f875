"""Judge committed HumanEval samples again with today's sandbox and compare each verdict with the committed one.

    python -m experiments.benchmarks.rejudge_published [--root results/published/table1_humaneval]

For every ``samples-*.jsonl`` under ``--root`` with its ``results-*.jsonl`` beside it, each sample is judged
again (isolation as chosen by ``LORD_SANDBOX``, default namespaces where they work) and the verdict compared
with the committed row. The committed rows came from the previous sandbox, whose verdict was an exit status;
a difference is either a forgery that sandbox let through or a regression — the JSON lists each one with the
completion, so it can be told which. Writes results/benchmarks/rejudge-<root name>.json.

Time: 2-4.5 min on a 2-core CPU, measured (the 984 Table 1 samples, 2 workers: 108 s and 260 s in two runs)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from experiments.benchmarks.common import parser, write
from lord.humaneval.evaluate import load_problems
from lord.humaneval.generate import read_jsonl
from lord.humaneval.sandbox import Judge, Limits


def main() -> int:
    ap = parser(__doc__, model=None)
    ap.add_argument("--root", type=Path, default=Path("results/published/table1_humaneval"))
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    problems = load_problems()
    folders, differ, counts = [], [], {}
    t0 = time.perf_counter()
    with Judge(problems, Limits()) as judge:
        for samples_file in sorted(args.root.rglob("samples-*.jsonl")):
            results_file = samples_file.with_name(samples_file.name.replace("samples-", "results-", 1))
            committed = {(r["task_id"], r["sample"]): r for r in read_jsonl(results_file)}
            samples = [s for s in read_jsonl(samples_file) if (s["task_id"], s["sample"]) in committed]
            verdicts = judge.judge_all([(s["task_id"], s["completion"]) for s in samples], workers=args.workers,
                                       progress=False)
            same = 0
            for s, v in zip(samples, verdicts):
                old = committed[(s["task_id"], s["sample"])]
                counts[v["verdict_by"]] = counts.get(v["verdict_by"], 0) + 1
                if old["passed"] == v["passed"]:
                    same += 1
                    continue
                differ.append({"folder": str(samples_file.parent), "task_id": s["task_id"], "sample": s["sample"],
                               "committed": {"passed": old["passed"], "outcome": old["outcome"]},
                               "now": v, "completion": s["completion"]})
            folders.append({"folder": str(samples_file.parent), "samples": len(samples), "same_verdict": same,
                            "passed_committed": sum(r["passed"] for r in committed.values()),
                            "passed_now": sum(v["passed"] for v in verdicts)})
        isolation = judge.describe()
    write(f"rejudge-{args.root.name}", {"root": str(args.root), "folders": folders,
                                        "samples": sum(f["samples"] for f in folders), "verdicts_differ": differ,
                                        "verdict_by": counts, "isolation": isolation,
                                        "wall_s": time.perf_counter() - t0})
    return 0


if __name__ == "__main__":
    sys.exit(main())

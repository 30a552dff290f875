"""How HumanEval completions fail, per run: read each run's samples and verdicts (the JSONL files written next to
its result) and sort every sample into one outcome -- passed, wrong answer, syntax error, runtime error,
timed out, empty body -- and, across outcomes, whether generation ran on without the preset's stop rule firing
and whether it went round in a loop. Pure functions of the result files; ``make_all`` writes the table.

A pass@1 gap says how much is lost; this says what kind of text was produced instead (e.g. a compressed model
that keeps repeating a doctest line until the token cap, which teacher-forced perplexity never exercises)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd

OUTCOMES = ["passed", "wrong answer", "syntax error", "runtime error", "timed out", "empty body", "other"]
COLUMNS = ["model", "experiment", "compression", "preset", "pass@1 %", "samples", *OUTCOMES, "unstopped",
           "ran to the cap", "looping", "ended by end-of-text", "median chars"]

SYNTAX = ("SyntaxError", "IndentationError", "TabError")
EMPTY_BODIES = {"pass", "...", "return", "return None"}
# a completion "loops" when it ran on unstopped and at least this share of its non-blank lines repeat an earlier one
LOOP_SHARE = 0.5


def outcome(completion: str, verdict: str, passed: bool) -> str:
    """One sample's outcome from its completion and the sandbox's verdict text (``passed``, ``timed out``,
    ``failed (exit 1: AssertionError: ...)``, ``failed (exit 1 before the end: SyntaxError: ...)``, ...)."""
    if passed:
        return "passed"
    code = [line.strip() for line in completion.splitlines() if line.strip() and not line.strip().startswith("#")]
    if not code or (len(code) == 1 and code[0] in EMPTY_BODIES):
        return "empty body"
    if verdict.startswith("timed out"):
        return "timed out"
    # "other": the sandbox killed the program (exit -9: a resource limit) or could not compare what it returned
    # (a function or a class)
    error = re.search(r"\b([A-Z]\w*(?:Error|Exception|Exit|Interrupt))\b", verdict)
    if error is None:
        return "other"
    name = error.group(1)
    if name == "AssertionError":
        return "wrong answer"
    return "syntax error" if name in SYNTAX else "runtime error"


def repeated_share(completion: str) -> float:
    """Share of the non-blank lines that repeat an earlier line exactly (0 for a text with none)."""
    lines = [line for line in completion.splitlines() if line.strip()]
    return 1 - len(set(lines)) / len(lines) if lines else 0.0


def unstopped(sample: dict) -> bool:
    """The preset's stop rule never fired: generation ended at the token cap or at the end-of-text token.
    Samples written since ``stop`` was recorded say which (``eos``, ``rule``, ``cap``); in older ones nothing cut
    from the generated text (``raw == completion``) is the only sign."""
    if "stop" in sample:
        return sample["stop"] != "rule"
    return sample["raw"] == sample["completion"]


def run_files(result_path: str | Path) -> list[tuple[Path, Path]]:
    """(samples, verdicts) JSONL pairs of one HumanEval result: they are in the folder named like the result file
    without ``.json``, one pair per seed."""
    folder = Path(result_path).with_suffix("")
    pairs = []
    for samples in sorted(folder.glob("samples-*.jsonl")):
        verdicts = samples.with_name("results-" + samples.name[len("samples-"):])
        if verdicts.exists():
            pairs.append((samples, verdicts))
    return pairs


def _jsonl(path: Path) -> dict:
    rows = (json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return {(r["task_id"], r.get("sample", 0)): r for r in rows}


def count_outcomes(pairs: list[tuple[Path, Path]]) -> dict:
    """Outcome counts over every sample with a verdict, plus how many ran on unstopped and how many looped."""
    counts = dict.fromkeys(OUTCOMES + ["unstopped", "looping", "samples"], 0)
    eos, cap, recorded, lengths = 0, 0, True, []
    for samples_path, verdicts_path in pairs:
        samples, verdicts = _jsonl(samples_path), _jsonl(verdicts_path)
        for key, v in verdicts.items():
            s = samples.get(key)
            if s is None:
                continue
            counts["samples"] += 1
            lengths.append(len(s["completion"]))
            recorded = recorded and "stop" in s
            eos += s.get("stop") == "eos"
            cap += s.get("stop") == "cap"
            counts[outcome(s["completion"], v.get("outcome", ""), bool(v["passed"]))] += 1
            if unstopped(s):
                counts["unstopped"] += 1
                counts["looping"] += repeated_share(s["completion"]) >= LOOP_SHARE
    # how many ended with the end-of-text token: None where the samples predate that record
    counts["ended by end-of-text"] = eos if recorded and lengths else None
    counts["ran to the cap"] = cap if recorded and lengths else None
    counts["median chars"] = float(pd.Series(lengths).median()) if lengths else None
    return counts


def _compression(r) -> str:
    if r.method == "dense":
        base = "dense"
    else:
        base = f"{r.method} {r.layers} {r.rank_value:g}" + (" % budget" if str(r.rank_unit).startswith("budget")
                                                             else "% rank red.")
        if str(r.rank_unit).startswith("budget-"):
            base += f" ({r.rank_unit.split('-', 1)[1]})"
    setting = r.setting if isinstance(r.setting, str) else ""
    return base + (f" {setting}" if setting.startswith("+") else f" + {setting}" if setting else "")


def _preset(r) -> str:
    """"greedy", or e.g. "code_eval x 5 seeds" for a sampled run with several seeds."""
    preset = r.get("humaneval_preset") if isinstance(r.get("humaneval_preset"), str) else "greedy"
    seeds = r.get("humaneval_seeds")
    return preset + (f" x {int(seeds)} seeds" if pd.notna(seeds) and seeds and int(seeds) > 1 else "")


def failures_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per HumanEval run whose samples are on disk: its preset (greedy, or sampled: code_eval, with its seeds),
    pass@1 and the count of each outcome over all its samples (every seed's), how many ran on unstopped, how many of
    those reached the token cap (where samples record why they stopped) and how many looped."""
    rows = []
    for _, r in df[df["eval"] == "humaneval"].iterrows():
        pairs = run_files(r.path)
        if not pairs:
            continue
        c = count_outcomes(pairs)
        rows.append([r.model, r.experiment, _compression(r), _preset(r), r.pass_at_1, c["samples"],
                     *(c[o] for o in OUTCOMES), c["unstopped"], c["ran to the cap"], c["looping"],
                     c["ended by end-of-text"], c["median chars"]])
    t = pd.DataFrame(rows, columns=COLUMNS)
    return t.sort_values(["model", "experiment", "pass@1 %"], ascending=[True, True, False]).reset_index(drop=True)


def compare_runs(result_a: str | Path, result_b: str | Path) -> dict:
    """Task by task, two HumanEval runs' first samples: which tasks both pass, only A, only B; and of the tasks only
    A passes, how many of B's completions ran on unstopped and how many of those looped."""
    def first_samples(result):
        pairs = run_files(result)
        if not pairs:
            raise SystemExit(f"{result}: no samples-*.jsonl / results-*.jsonl next to it; give a HumanEval result "
                             "file whose run kept its samples")
        samples, verdicts = (_jsonl(p) for p in pairs[0])
        return {tid: (bool(v["passed"]), samples.get((tid, i))) for (tid, i), v in verdicts.items() if i == 0}

    a, b = first_samples(result_a), first_samples(result_b)
    tasks = sorted(set(a) & set(b))
    only_a = [t for t in tasks if a[t][0] and not b[t][0]]
    b_unstopped = [t for t in only_a if b[t][1] is not None and unstopped(b[t][1])]
    return {"tasks": len(tasks), "both pass": sum(a[t][0] and b[t][0] for t in tasks), "only A passes": len(only_a),
            "only B passes": sum(b[t][0] and not a[t][0] for t in tasks),
            "only A: B unstopped": len(b_unstopped),
            "only A: B looping": sum(repeated_share(b[t][1]["completion"]) >= LOOP_SHARE for t in b_unstopped)}


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 3:
        raise SystemExit("usage: python -m analysis.humaneval_failures RESULT_A.json RESULT_B.json  (two HumanEval "
                         "result files: tasks each passes that the other fails)")
    print(json.dumps(compare_runs(sys.argv[1], sys.argv[2]), indent=2))

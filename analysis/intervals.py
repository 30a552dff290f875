"""95 % intervals for perplexity increases and for differences between them, from per-window NLL.

A perplexity result records the NLL of every validation window for the compressed model and, on the same tokens,
for the dense one (``lord.evaluations.perplexity``). Windows come from different files, so they are the
independent unit; the increase of one window is ``d_i = (NLL_i - NLL_dense,i) / tokens``, and with windows of
equal length the run's ``Δ log ppl`` is their mean.

**Bootstrap.** Windows are resampled with replacement -- the same windows for both sides of a paired comparison
(two results on the same tokens) -- and, when a point was run with several calibration draws, the draws are
resampled too (the estimate is then the mean over draws, and its interval carries both the validation text's and
the calibration's spread). With 8 windows the plain percentile interval is too narrow (its coverage is below the
nominal level for small samples), so the percentiles are widened as in the expanded percentile bootstrap
(Hesterberg, 2015): ``alpha' / 2 = Phi(-sqrt(n / (n - 1)) t_{alpha/2, n-1})``, ``n`` the windows.

A difference whose interval contains 0 is "not resolved".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

N_BOOT = 4000
SEED = 0
LEVEL = 0.95
CI_MISSING = "n/a"  # a result from before per-window NLL was recorded
CI_COLUMN = "ppl increase 95 % CI"


def _t_cdf(x: float, df: int) -> float:
    """Student's t distribution function (Simpson's rule on its density; accurate to ~1e-9 for df >= 1)."""
    if x < 0:
        return 1 - _t_cdf(-x, df)
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)
    steps = 2000
    grid = np.linspace(0.0, x, steps + 1)
    pdf = c * (1 + grid**2 / df) ** (-(df + 1) / 2)
    h = x / steps
    return 0.5 + h / 3 * (pdf[0] + pdf[-1] + 4 * pdf[1:-1:2].sum() + 2 * pdf[2:-1:2].sum())


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (bisection on ``_t_cdf``)."""
    if not 0 < p < 1:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if p < 0.5:
        return -t_quantile(1 - p, df)
    lo, hi = 0.0, 1.0
    while _t_cdf(hi, df) < p:
        hi *= 2
    for _ in range(80):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_cdf(mid, df) < p else (lo, mid)
    return (lo + hi) / 2


def expanded_tail(n: int, level: float = LEVEL) -> float:
    """The tail probability ``alpha'/2`` of the expanded percentile interval for ``n`` resampled units."""
    alpha = 1 - level
    return NormalDist().cdf(-math.sqrt(n / (n - 1)) * t_quantile(1 - alpha / 2, n - 1))


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float

    @property
    def resolved(self) -> bool:
        """Whether the interval excludes 0."""
        return self.low > 0 or self.high < 0

    def map(self, f) -> "Interval":
        return Interval(f(self.estimate), f(self.low), f(self.high))


def window_deltas(window_nll, dense_window_nll, n_tokens: int) -> np.ndarray:
    """Per window, ``(NLL - NLL_dense) / tokens per window`` (windows of equal length)."""
    a, b = np.asarray(window_nll, dtype=float), np.asarray(dense_window_nll, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"per-window NLLs of different shapes: {a.shape} and {b.shape}")
    return (a - b) / (n_tokens / len(a))


def _as_draws(deltas) -> np.ndarray:
    """(draws, windows) from one window vector or a list of them (one per calibration draw)."""
    d = np.asarray(deltas, dtype=float)
    return d[None, :] if d.ndim == 1 else d


def _bootstrap(stat, n_windows: int, n_draws: tuple[int, ...], level: float, seed: int, n_boot: int):
    rng = np.random.default_rng(seed)
    windows = rng.integers(0, n_windows, size=(n_boot, n_windows))
    draws = [rng.integers(0, k, size=(n_boot, k)) for k in n_draws]
    values = stat(windows, draws)
    tail = expanded_tail(n_windows, level)
    return float(np.quantile(values, tail)), float(np.quantile(values, 1 - tail))


def mean_interval(deltas, level: float = LEVEL, seed: int = SEED, n_boot: int = N_BOOT) -> Interval | None:
    """The mean ``Δ log ppl`` (over draws and windows) with its interval; None with fewer than 2 windows."""
    d = _as_draws(deltas)
    if d.shape[1] < 2:
        return None

    def stat(w, draws):
        per_draw = d[:, w].mean(axis=2)  # (draws, boot)
        return np.take_along_axis(per_draw.T, draws[0], axis=1).mean(axis=1)
    lo, hi = _bootstrap(stat, d.shape[1], (d.shape[0],), level, seed, n_boot)
    return Interval(float(d.mean()), lo, hi)


def difference_interval(a, b, paired_windows: bool = True, paired_draws: bool = False, level: float = LEVEL,
                        seed: int = SEED, n_boot: int = N_BOOT) -> Interval | None:
    """``mean Δ(a) - mean Δ(b)`` with its interval. ``paired_windows``: a and b were measured on the same windows
    (resampled together); otherwise each side's windows are resampled independently (e.g. two models with
    different tokenizers). ``paired_draws``: draw k of a goes with draw k of b (e.g. noise seed k with calibration
    draw k); otherwise draws are resampled independently."""
    a, b = _as_draws(a), _as_draws(b)
    if min(a.shape[1], b.shape[1]) < 2:
        return None
    if paired_windows and a.shape[1] != b.shape[1]:
        raise ValueError(f"paired windows need the same windows on both sides, got {a.shape[1]} and {b.shape[1]}")
    if paired_draws and a.shape[0] != b.shape[0]:
        raise ValueError(f"paired draws need as many draws on both sides, got {a.shape[0]} and {b.shape[0]}")
    rng = np.random.default_rng(seed)
    n = min(a.shape[1], b.shape[1])
    wa = rng.integers(0, a.shape[1], size=(n_boot, a.shape[1]))
    wb = wa if paired_windows else rng.integers(0, b.shape[1], size=(n_boot, b.shape[1]))
    da = rng.integers(0, a.shape[0], size=(n_boot, a.shape[0]))
    db = da if paired_draws else rng.integers(0, b.shape[0], size=(n_boot, b.shape[0]))

    def side(d, w, k):
        per_draw = d[:, w].mean(axis=2).T  # (boot, draws)
        return np.take_along_axis(per_draw, k, axis=1).mean(axis=1)
    values = side(a, wa, da) - side(b, wb, db)
    tail = expanded_tail(n, level)
    return Interval(float(a.mean() - b.mean()), float(np.quantile(values, tail)), float(np.quantile(values, 1 - tail)))


def increase_percent(log_interval: Interval) -> Interval:
    """A ``Δ log ppl`` interval as a perplexity increase in %."""
    return log_interval.map(lambda x: 100 * math.expm1(x))


def with_ci(df):
    """``df`` with a ``ppl_increase_ci`` column ("n/a" where a frame built without one lacks it)."""
    return df if "ppl_increase_ci" in df else df.assign(ppl_increase_ci=CI_MISSING)


def fmt(interval: Interval | None, digits: int = 3) -> str:
    """``[low, high]`` with ``digits`` significant digits, or "n/a" (a result from before per-window NLL)."""
    if interval is None:
        return CI_MISSING
    return f"[{interval.low:.{digits}g}, {interval.high:.{digits}g}]"

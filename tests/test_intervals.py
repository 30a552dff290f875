"""Intervals from per-window NLL (analysis/intervals.py): the t quantile, the expanded percentile bootstrap's
coverage, pairing, and calibration draws."""

import math

import numpy as np
import pytest

from analysis.intervals import (difference_interval, expanded_tail, increase_percent, mean_interval, t_quantile,
                                window_deltas)


def test_t_quantiles_match_the_tables():
    for p, df, want in ((0.975, 7, 2.364624), (0.975, 1, 12.706205), (0.95, 30, 1.697261), (0.025, 3, -3.182446)):
        assert t_quantile(p, df) == pytest.approx(want, abs=2e-5)
    assert expanded_tail(8) < 0.025 < expanded_tail(1000) + 1e-3  # wider with few windows, plain with many


def test_the_interval_covers_the_mean_about_as_often_as_it_says_with_eight_windows():
    """Normal per-window increases around 0.2: the expanded 95 % interval covers 0.2 in 91-99 % of 300 samples (the
    plain percentile interval covers ~88 % at n = 8: a formula error shows here)."""
    rng = np.random.default_rng(1)
    hits = 0
    for i in range(300):
        ci = mean_interval(rng.normal(0.2, 0.05, 8), n_boot=1000, seed=i)
        hits += ci.low <= 0.2 <= ci.high
    assert 0.91 <= hits / 300 <= 0.99


def test_pairing_removes_what_two_results_on_the_same_windows_share():
    """b = a + 0.01 on every window: paired, the difference is exactly -0.01; unpaired, the windows' own spread
    enters the interval."""
    rng = np.random.default_rng(0)
    a = rng.normal(0.3, 0.2, 8)
    b = a + 0.01
    paired = difference_interval(a, b)
    assert paired.estimate == pytest.approx(-0.01) and paired.low == pytest.approx(-0.01)
    assert paired.high == pytest.approx(-0.01) and paired.resolved
    unpaired = difference_interval(a, b, paired_windows=False)
    assert unpaired.low < -0.05 and unpaired.high > 0.03 and not unpaired.resolved


def test_calibration_draws_widen_the_interval_and_the_estimate_is_their_mean():
    rng = np.random.default_rng(2)
    windows = rng.normal(0, 0.02, 8)
    one = mean_interval(0.2 + windows)
    draws = mean_interval([0.15 + windows, 0.2 + windows, 0.25 + windows])
    assert draws.estimate == pytest.approx(0.2 + windows.mean())
    assert (draws.high - draws.low) > 2 * (one.high - one.low)


def test_window_deltas_and_percent():
    d = window_deltas([110.0, 220.0], [100.0, 200.0], n_tokens=20)  # 10 tokens per window
    assert d.tolist() == [1.0, 2.0]
    ci = increase_percent(mean_interval([0.1, 0.1, 0.1]))
    assert ci.estimate == pytest.approx(100 * math.expm1(0.1)) and ci.low == pytest.approx(ci.high)
    with pytest.raises(ValueError):
        window_deltas([1.0], [1.0, 2.0], 4)
    assert mean_interval([0.1]) is None  # one window: no interval


def test_the_verdict_table_names_its_runs_and_lists_what_is_not_run_yet():
    """A clear effect in the expected direction is 'supported', each side's result files are named by their
    identity, and every hypothesis without (all) its runs is still listed, as 'not run yet'."""
    import pandas as pd

    from analysis.verdicts import HYPOTHESES, NOISE_TEXT, UNTESTABLE, verdict_table

    rng = np.random.default_rng(0)
    rows = []
    for method, level in (("lord", 0.12), ("svd", 0.30)):
        for draw in ((1, 2, 3) if method == "lord" else (None,)):
            rows.append({"experiment": "verdict_draws", "eval": "perplexity", "model": "qwen2.5-coder-0.5b",
                         "method": method, "layers": "mlp_down", "rank_value": 25.0, "rank_unit": "reduction",
                         "setting": "", "calibration_draw": draw,
                         "window_deltas": level + rng.normal(0, 0.01, 8),
                         "path": f"results/x/{method}-{draw}/mlp_down/reduction-25-{len(rows):08x}.json"})
    t = verdict_table(pd.DataFrame(rows))
    assert len(t) == len(HYPOTHESES) + 1 + len(UNTESTABLE)  # every hypothesis, the 4-bit proxy, the untestable
    first = t.iloc[0]
    assert first.verdict == "supported" and first.runs == "A: 00000000 00000001 00000002; B: 00000003"
    assert set(t.verdict[1:len(HYPOTHESES)]) == {"not run yet"}
    assert t[t.hypothesis == NOISE_TEXT].verdict.tolist() == ["not run yet"]

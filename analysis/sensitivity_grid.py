"""How coarse the measured allocation's options can be (``experiment=tune_grid``): runs of ``rank.allocation=measured``
that differ only in ``sensitivity.grid``, each against the run with the default grid (else the most options) at the
same model, method and budget. The KL table's cost grows with the options per matrix, so this is what a cheaper table
costs in quality."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.intervals import CI_COLUMN, difference_interval, fmt, with_ci
from analysis.pareto import _verdict, budget_rows, label

COLUMNS = ["model", "corpus", "method", "budget %", "grid (% removed per option)", "options per matrix",
           "ppl increase %", CI_COLUMN, "against", "Δ log ppl vs the reference grid", "95 % CI of the difference",
           "verdict"]


def sensitivity_record(path: str) -> dict:
    """The result's record of its KL table (``compression.allocation.sensitivity``; {} when it has none)."""
    result = json.loads(Path(path).read_text())
    return ((result.get("compression") or {}).get("allocation") or {}).get("sensitivity") or {}


def grid_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per measured-allocation run: its grid, its perplexity increase, and the paired difference in mean
    Δ log ppl over the validation windows against the reference run of the same point (model, corpus, method,
    stages, layers, calibration, budget, and the KL table's windows and tokens): the run with the default grid
    (``lord.identity.ADDED_KEYS``), else the one with the most options (positive: the other grid lost more; the
    reference itself has no difference)."""
    from lord.identity import ADDED_KEYS

    default = tuple(ADDED_KEYS["sensitivity"]["grid"])
    d = with_ci(budget_rows(df))
    d = d[d.rank_unit == "budget-measured"]
    records = [sensitivity_record(p) for p in d.path]
    d = d.assign(corpus=d.get("corpus", pd.Series("", index=d.index)).fillna(""),
                 grid=[tuple(r.get("grid") or ()) for r in records],
                 kl_tokens=[(r.get("windows"), r.get("seq_len")) for r in records])
    d = d[d.grid.map(len) > 0]
    point = [c for c in ["model", "corpus", "method", "setting", "layers", "blocks", "calibration",
                         "calibration_windows", "rank_value", "kl_tokens"] if c in d]
    rows = []
    for _, g in d.fillna({c: "" for c in point if c != "kl_tokens"}).groupby(point):
        full = g.loc[(g.grid == default).idxmax()] if (g.grid == default).any() else g.loc[g.grid.map(len).idxmax()]
        for _, r in g.sort_values("grid", key=lambda s: -s.map(len)).iterrows():
            diff, mine, ref = None, r.window_deltas, full.window_deltas
            if r.path != full.path and isinstance(mine, np.ndarray) and isinstance(ref, np.ndarray) \
                    and mine.shape == ref.shape:
                diff = difference_interval(mine, ref)
            rows.append([r.model, r.corpus, label(r.method, r.rank_unit, r.setting), r.rank_value,
                         ", ".join(f"{f:g}" for f in r.grid), len(r.grid), r.perplexity_increase_percent,
                         r.ppl_increase_ci, "" if r.path == full.path else ", ".join(f"{f:g}" for f in full.grid),
                         None if diff is None else diff.estimate, "" if diff is None else fmt(diff),
                         "" if diff is None else _verdict(diff)])
    t = pd.DataFrame(rows, columns=COLUMNS)
    return t.sort_values(["model", "corpus", "method", "budget %", "options per matrix"],
                         ascending=[True, True, True, True, False], kind="stable").reset_index(drop=True)

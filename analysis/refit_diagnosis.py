"""Why ``refit`` hurts at large budgets (``experiment=refit_diagnosis``): the candidate causes changed one at a time,
each run set against the run without refit on the same calibration windows, with the refit's own per-layer record
(``stages.refit.targets``) summarised beside it (docs/findings/beyond-the-paper.md)."""

from __future__ import annotations

import json
from pathlib import Path
from statistics import median

import numpy as np
import pandas as pd

from analysis.intervals import difference_interval, fmt, increase_percent, mean_interval
from analysis.pareto import budget_rows, label

COLUMNS = ["model", "budget %", "method", "calibration windows", "refit.skip_first", "refit.order",
           "ridge chosen on held-out from",
           "ppl increase %", "ppl increase 95 % CI", "Δ log ppl vs no refit", "Δ vs no refit 95 % CI",
           "layers refitted", "calibration objective after/before (median)", "held-out after/before (median)",
           "first position's residual share (median)", "first position vs a typical one (median ×)",
           "first position's residual share (largest)", "layer with the largest share", "refit s"]


def refit_summary(record: dict | None, seq_len: int | None) -> dict:
    """One run's refit record in numbers: medians over its layers."""
    targets = (record or {}).get("targets") or []
    if not targets:
        return {}
    ratios = [t["objective_after"] / t["objective_before"] for t in targets if t.get("objective_before")]
    held = [t["held_out_after"] / t["held_out_before"] for t in targets if t.get("held_out_before")]
    shares = [t["first_position_residual_share"] for t in targets
              if t.get("first_position_residual_share") is not None]
    share = median(shares) if shares else None
    largest = max((t for t in targets if t.get("first_position_residual_share") is not None),
                  key=lambda t: t["first_position_residual_share"], default=None)
    ridges = record.get("ridges") or []
    return {"refit.skip_first": record.get("skip_first", 0), "refit.order": record.get("order", "block"),
            "ridge chosen on held-out from": ", ".join(f"{r:g}" for r in ridges) if len(ridges) > 1 else "",
            "layers refitted": len(targets),
            "calibration objective after/before (median)": median(ratios) if ratios else None,
            "held-out after/before (median)": median(held) if held else None,
            "first position's residual share (median)": share,
            "first position vs a typical one (median ×)": share * seq_len if share is not None and seq_len else None,
            "first position's residual share (largest)": largest["first_position_residual_share"] if largest else None,
            "layer with the largest share": largest.get("name", f"block {largest.get('block')}") if largest else "",
            "refit s": record.get("seconds")}


def _has_refit(setting) -> bool:
    return isinstance(setting, str) and "refit" in setting


def refit_diagnosis_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per budget run of ``df``; a run with refit gets the paired difference in mean ``Δ log ppl`` from the
    run without refit of the same model, budget, allocation and calibration windows (positive: refit is worse)."""
    d = budget_rows(df)
    rows = []
    for r in d.itertuples():
        result = json.loads(Path(r.path).read_text())
        record = (result.get("stages") or {}).get("refit")
        deltas = r.window_deltas if isinstance(r.window_deltas, np.ndarray) else None
        ci = mean_interval(deltas) if deltas is not None else None
        row = {"model": r.model, "budget %": r.rank_value, "method": label(r.method, r.rank_unit, r.setting),
               "calibration windows": r.calibration_windows, "refit.skip_first": None, "refit.order": "",
               "ppl increase %": r.perplexity_increase_percent,
               "ppl increase 95 % CI": fmt(increase_percent(ci)) if ci is not None else fmt(None),
               **refit_summary(record, r.calibration_seq_len)}
        base = d[(d.model == r.model) & (d.rank_value == r.rank_value) & (d.rank_unit == r.rank_unit)
                 & (d.method == r.method) & (d.calibration_windows == r.calibration_windows)
                 & ~d.setting.map(_has_refit)]
        if _has_refit(r.setting) and len(base) == 1 and deltas is not None \
                and isinstance(base.window_deltas.iloc[0], np.ndarray):
            diff = difference_interval(deltas, base.window_deltas.iloc[0])
            row["Δ log ppl vs no refit"], row["Δ vs no refit 95 % CI"] = diff.estimate, fmt(diff)
        rows.append(row)
    t = pd.DataFrame(rows, columns=COLUMNS)
    return t.sort_values(["model", "budget %", "calibration windows", "method", "refit.skip_first", "refit.order"],
                         na_position="first").reset_index(drop=True)

"""Diagnosis ablations (why Qwen2.5-Coder degrades faster than the paper's models): tables of pure functions of
the results frame.

Effects are compared on the log-perplexity scale, ``Δ = ln(ppl) − ln(ppl_dense)``: if layer kinds damage the
model independently, their Δs add up, so the all-layer Δ is set next to the sum of its kinds' Δs measured alone.
Every point is given on both size axes: % rank reduction (the paper's unit) and % of the chosen layers' own
parameters removed (negative: the factors are larger than the dense matrices).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

# the single-kind selections whose union is each all-layer selection (same grouping)
COMPONENTS = {
    "all-grouped": ["attn_qkv-grouped", "attn_out", "mlp_gate_up-grouped", "mlp_down"],
    "all": ["attn_qkv", "attn_out", "mlp_gate", "mlp_up", "mlp_down"],
}


ADDITIVITY_COLUMNS = ["model", "method", "% rank reduction", "layers", "Δ log ppl (all together)",
                      "Σ Δ log ppl (each kind alone)", "together / sum", "largest share"]


def with_log_increase(df: pd.DataFrame) -> pd.DataFrame:
    """Perplexity rows with ``log_ppl_increase`` = ln(ppl / dense ppl)."""
    d = df[(df["eval"] == "perplexity") & (df.method != "dense")].copy()
    d["log_ppl_increase"] = np.log(d.perplexity.astype(float)) - np.log(d.dense_perplexity.astype(float))
    return d


def layer_kind_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (layers, method, % rank reduction, skip_first): both size axes and both effect scales."""
    d = with_log_increase(df)
    if d.empty:
        return pd.DataFrame()
    cols = {"layers": "layers", "method": "method", "rank_value": "% rank reduction",
            "target_params_removed_percent": "% of these layers' params removed",
            "params_reduction_percent": "% of model params removed",
            "perplexity_increase_percent": "ppl increase %", "log_ppl_increase": "Δ log ppl"}
    if d.skip_first.fillna(0).astype(int).any():
        cols["skip_first"] = "skip_first"
    return d.sort_values(["layers", "method", "rank_value"])[list(cols)].rename(columns=cols).reset_index(drop=True)


def additivity_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per (model, method, % rank reduction, all-layer selection): the all-layer Δ log ppl, the sum of its kinds'
    Δs measured alone (only when every kind was run), and their ratio (1: the kinds add up; > 1: they compound)."""
    d = with_log_increase(df)
    d = d[d.skip_first.fillna(0).astype(int) == 0]
    rows = []
    for (model, method, rank), g in d.groupby(["model", "method", "rank_value"]):
        by_layers = g.drop_duplicates("layers").set_index("layers").log_ppl_increase
        for whole, parts in COMPONENTS.items():
            if whole not in by_layers:
                continue
            known = [p for p in parts if p in by_layers]
            total = float(by_layers[known].sum()) if len(known) == len(parts) else None
            rows.append({"model": model, "method": method, "% rank reduction": rank, "layers": whole,
                         "Δ log ppl (all together)": float(by_layers[whole]),
                         "Σ Δ log ppl (each kind alone)": total,
                         "together / sum": None if not total else float(by_layers[whole]) / total,
                         "largest share": _largest(by_layers, parts) if total else None})
    return pd.DataFrame(rows, columns=ADDITIVITY_COLUMNS)


def _largest(by_layers: pd.Series, parts: list[str]) -> str:
    """The kind with the largest Δ alone and its share of the sum."""
    s = by_layers[parts]
    return f"{s.idxmax()} ({100 * s.max() / s.sum():.0f} %)"

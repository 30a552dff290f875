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


BLOCK_COLUMNS = ["model", "method", "% rank reduction", "layers", "block", "% of model params removed", "Δ log ppl",
                 "share of Σ (%)"]


def block_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per (model, method, % rank reduction, layers): each block compressed alone (``layers.indices=[i]``) with
    its Δ log ppl and share of the blocks' sum, then the sum over the blocks run alone, any set of blocks
    compressed together (e.g. "blocks0-22 together"), and all blocks together (when those runs exist); their
    ratio to the sum says whether the blocks' damages add up."""
    d = with_log_increase(df)
    d = d[d.skip_first.fillna(0).astype(int) == 0]
    rows = []
    for (model, method, rank, layers), g in d.groupby(["model", "method", "rank_value", "layers"]):
        blocks = g.blocks.fillna("")
        one = g[blocks.str.fullmatch(r"blocks\d+")].drop_duplicates("blocks")
        if one.empty:
            continue
        one = one.assign(block=one.blocks.str.slice(len("blocks")).astype(int)).sort_values("block")
        total = float(one.log_ppl_increase.sum())
        key = {"model": model, "method": method, "% rank reduction": rank, "layers": layers}
        for r in one.itertuples():
            rows.append({**key, "block": str(r.block), "% of model params removed": r.params_reduction_percent,
                         "Δ log ppl": r.log_ppl_increase, "share of Σ (%)": 100 * r.log_ppl_increase / total})
        rows.append({**key, "block": f"Σ of {len(one)} blocks alone", "% of model params removed":
                     float(one.params_reduction_percent.sum()), "Δ log ppl": total, "share of Σ (%)": 100.0})
        several = g[~blocks.str.fullmatch(r"blocks\d+")].drop_duplicates("blocks")  # every block, or a set
        for t in several.assign(whole=several.blocks.fillna("") == "").sort_values("whole").itertuples():
            name = "all together" if t.whole else f"{t.blocks} together"
            rows.append({**key, "block": name, "% of model params removed": t.params_reduction_percent,
                         "Δ log ppl": t.log_ppl_increase, "share of Σ (%)": 100 * t.log_ppl_increase / total})
    return pd.DataFrame(rows, columns=BLOCK_COLUMNS)


CALIBRATION_COLUMNS = ["model", "method", "% rank reduction", "layers", "calibration", "windows", "tokens per window",
                       "calibration tokens", "corpus", "mode", "ppl increase %", "Δ log ppl"]


def calibration_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per calibration setting (windows, tokens per window, corpus, oneshot/sequential) of each (model,
    method, % rank reduction, layers), statistics over every position; sorted by mode, corpus, then tokens."""
    d = with_log_increase(df)
    d = d[(d.skip_first.fillna(0).astype(int) == 0) & (d.blocks.fillna("") == "")]
    if d.empty:
        return pd.DataFrame(columns=CALIBRATION_COLUMNS)
    d = d.drop_duplicates(["model", "method", "rank_value", "layers", "calibration", "calibration_windows",
                           "calibration_seq_len", "calibration_corpus"])
    rows = [{"model": r.model, "method": r.method, "% rank reduction": r.rank_value, "layers": r.layers,
             "calibration": calibration_label(r.calibration_windows, r.calibration_seq_len, r.calibration_corpus,
                                              r.calibration),
             "windows": int(r.calibration_windows), "tokens per window": int(r.calibration_seq_len),
             "calibration tokens": int(r.calibration_windows) * int(r.calibration_seq_len),
             "corpus": r.calibration_corpus, "mode": r.calibration, "ppl increase %": r.perplexity_increase_percent,
             "Δ log ppl": r.log_ppl_increase} for r in d.itertuples()]
    return (pd.DataFrame(rows, columns=CALIBRATION_COLUMNS)
            .sort_values(["model", "layers", "method", "% rank reduction", "mode", "corpus", "tokens per window",
                          "calibration tokens"]).reset_index(drop=True))


def calibration_label(windows, seq_len, corpus, mode) -> str:
    """E.g. "16 × 1,024 stdlib" or "16 × 1,024 stdlib-tests, sequential"."""
    return f"{int(windows)} × {int(seq_len):,} {corpus}" + (f", {mode}" if mode != "oneshot" else "")


PASS_COLUMNS = ["model", "method", "layers", "% rank reduction", "ppl increase %", "Δ log ppl", "pass@1 %",
                "pass@1 CI low %", "pass@1 CI high %", "pass@1 relative to dense %"]


def humaneval_vs_perplexity(df: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Greedy pass@1 next to the perplexity increase of the same compression (model, method, layers, rank), with
    the dense model as the first row of each model; and per model the Spearman rank correlation between Δ log
    ppl and pass@1 over the paired points (dense included): {model: (rho, n)}."""
    key = ["model", "method", "layers", "rank_value"]
    ev = df[(df["eval"] == "humaneval") & (df.skip_first.fillna(0).astype(int) == 0)
            & (df.blocks.fillna("") == "")].drop_duplicates(key)
    ppl = df[(df["eval"] == "perplexity") & (df.skip_first.fillna(0).astype(int) == 0)
             & (df.blocks.fillna("") == "")].copy()
    ppl["log_ppl_increase"] = np.log(ppl.perplexity.astype(float)) - np.log(ppl.dense_perplexity.astype(float))
    dense = ev[ev.method == "dense"][key].assign(perplexity_increase_percent=0.0, log_ppl_increase=0.0)
    ppl = pd.concat([dense, ppl[ppl.method != "dense"]]).drop_duplicates(key)  # dense: no increase, by definition
    dense_pass = ev[ev.method == "dense"].set_index("model").pass_at_1
    both = ev.merge(ppl[key + ["perplexity_increase_percent", "log_ppl_increase"]], on=key, how="inner",
                    suffixes=("", "_ppl"))
    rows = [{"model": r.model, "method": r.method, "layers": r.layers,
             "% rank reduction": r.rank_value, "ppl increase %": r.perplexity_increase_percent_ppl,
             "Δ log ppl": r.log_ppl_increase, "pass@1 %": r.pass_at_1,  # results hold pass@k in %
             "pass@1 CI low %": r.pass_at_1_ci_low if pd.notna(r.pass_at_1_ci_low) else None,
             "pass@1 CI high %": r.pass_at_1_ci_high if pd.notna(r.pass_at_1_ci_high) else None,
             "pass@1 relative to dense %": 100 * r.pass_at_1 / dense_pass[r.model] if r.model in dense_pass
             else None} for r in both.itertuples()]
    t = pd.DataFrame(rows, columns=PASS_COLUMNS).sort_values(["model", "Δ log ppl"]).reset_index(drop=True)
    rho = {}
    for model, g in t.groupby("model"):
        if len(g) >= 3:
            ranks = g[["Δ log ppl", "pass@1 %"]].rank()
            rho[model] = (float(ranks["Δ log ppl"].corr(ranks["pass@1 %"])), len(g))
    return t, rho


NOISE_COLUMNS = ["model", "layers", "method", "% rank reduction", "Δ log ppl, clean model",
                 "Δ log ppl, noisy model", "noisy / clean", "noise alone (Δ log ppl of the noisy dense model)"]


def quant_noise_table(noisy: pd.DataFrame, clean: pd.DataFrame) -> pd.DataFrame:
    """Per compression: its Δ log ppl over the clean dense model (``clean``: runs without noise) and over the
    noisy dense model (``noisy``: the quant_noise runs, whose dense run is the noisy model alone). A ratio above
    1: the extra quantization-like noise makes the model more sensitive to decomposition."""
    n = with_log_increase(noisy)
    dense = noisy[(noisy["eval"] == "perplexity") & (noisy.method == "dense")]
    c = with_log_increase(clean)
    c = c[(c.skip_first.fillna(0).astype(int) == 0) & (c.blocks.fillna("") == "")]
    rows = []
    for r in n.drop_duplicates(["model", "layers", "method", "rank_value"]).itertuples():
        base = dense[dense.model == r.model]
        ref = c[(c.model == r.model) & (c.layers == r.layers) & (c.method == r.method) & (c.rank_value == r.rank_value)]
        if base.empty:
            continue
        noise = float(np.log(float(base.perplexity.iloc[0])) - np.log(float(base.dense_perplexity.iloc[0])))
        on_noisy = float(np.log(float(r.perplexity)) - np.log(float(base.perplexity.iloc[0])))
        on_clean = float(ref.log_ppl_increase.iloc[0]) if len(ref) else None
        rows.append({"model": r.model, "layers": r.layers, "method": r.method, "% rank reduction": r.rank_value,
                     "Δ log ppl, clean model": on_clean, "Δ log ppl, noisy model": on_noisy,
                     "noisy / clean": on_noisy / on_clean if on_clean else None,
                     "noise alone (Δ log ppl of the noisy dense model)": noise})
    return pd.DataFrame(rows, columns=NOISE_COLUMNS)


def _largest(by_layers: pd.Series, parts: list[str]) -> str:
    """The kind with the largest Δ alone and its share of the sum."""
    s = by_layers[parts]
    return f"{s.idxmax()} ({100 * s.max() / s.sum():.0f} %)"


SIZE_COLUMNS = ["layers", "method", "% rank reduction", "model", "params (B)", "dense ppl", "ppl increase %",
                "Δ log ppl", "% of these layers' params removed"]


def size_table(df: pd.DataFrame) -> pd.DataFrame:
    """Diagnosis Q6 (size trend): the same compression (layers, method, % rank reduction) on each model, every
    block and the profile's calibration, smallest model first."""
    d = with_log_increase(df)
    d = d[(d.setting.fillna("") == "") & (d.blocks.fillna("") == "") & (d.calibration == "oneshot")]
    rows = [{"layers": r.layers, "method": r.method, "% rank reduction": r.rank_value, "model": r.model,
             "params (B)": r.params_dense / 1e9, "dense ppl": r.dense_perplexity,
             "ppl increase %": r.perplexity_increase_percent, "Δ log ppl": r.log_ppl_increase,
             "% of these layers' params removed": r.target_params_removed_percent}
            for r in d.drop_duplicates(["model", "layers", "method", "rank_value"]).itertuples()]
    t = pd.DataFrame(rows, columns=SIZE_COLUMNS)
    return t.sort_values(["layers", "method", "% rank reduction", "params (B)"]).reset_index(drop=True)

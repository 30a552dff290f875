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

from analysis.intervals import CI_COLUMN, CI_MISSING, difference_interval, fmt, with_ci

# the single-kind selections whose union is each all-layer selection (same grouping)
COMPONENTS = {
    "all-grouped": ["attn_qkv-grouped", "attn_out", "mlp_gate_up-grouped", "mlp_down"],
    "all": ["attn_qkv", "attn_out", "mlp_gate", "mlp_up", "mlp_down"],
}


ADDITIVITY_COLUMNS = ["model", "method", "% rank reduction", "layers", "Δ log ppl (all together)",
                      "all together: " + CI_COLUMN, "Σ Δ log ppl (each kind alone)", "together / sum", "largest share"]


def with_log_increase(df: pd.DataFrame) -> pd.DataFrame:
    """Perplexity rows with ``log_ppl_increase`` = ln(ppl / dense ppl)."""
    d = with_ci(df[(df["eval"] == "perplexity") & (df.method != "dense")]).copy()
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
            "perplexity_increase_percent": "ppl increase %", "ppl_increase_ci": CI_COLUMN,
            "log_ppl_increase": "Δ log ppl"}
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
        one = g.drop_duplicates("layers").set_index("layers")
        by_layers = one.log_ppl_increase
        for whole, parts in COMPONENTS.items():
            if whole not in by_layers:
                continue
            known = [p for p in parts if p in by_layers]
            total = float(by_layers[known].sum()) if len(known) == len(parts) else None
            rows.append({"model": model, "method": method, "% rank reduction": rank, "layers": whole,
                         "Δ log ppl (all together)": float(by_layers[whole]),
                         "all together: " + CI_COLUMN: one.ppl_increase_ci[whole],
                         "Σ Δ log ppl (each kind alone)": total,
                         "together / sum": None if not total else float(by_layers[whole]) / total,
                         "largest share": _largest(by_layers, parts) if total else None})
    return pd.DataFrame(rows, columns=ADDITIVITY_COLUMNS)


BLOCK_COLUMNS = ["model", "method", "% rank reduction", "layers", "block", "% of model params removed", "Δ log ppl",
                 CI_COLUMN, "share of Σ (%)"]


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
                         "Δ log ppl": r.log_ppl_increase, CI_COLUMN: r.ppl_increase_ci,
                         "share of Σ (%)": 100 * r.log_ppl_increase / total})
        rows.append({**key, "block": f"Σ of {len(one)} blocks alone", CI_COLUMN: "", "% of model params removed":
                     float(one.params_reduction_percent.sum()), "Δ log ppl": total, "share of Σ (%)": 100.0})
        several = g[~blocks.str.fullmatch(r"blocks\d+")].drop_duplicates("blocks")  # every block, or a set
        for t in several.assign(whole=several.blocks.fillna("") == "").sort_values("whole").itertuples():
            name = "all together" if t.whole else f"{t.blocks} together"
            rows.append({**key, "block": name, "% of model params removed": t.params_reduction_percent,
                         "Δ log ppl": t.log_ppl_increase, CI_COLUMN: t.ppl_increase_ci,
                         "share of Σ (%)": 100 * t.log_ppl_increase / total})
    return pd.DataFrame(rows, columns=BLOCK_COLUMNS)


CALIBRATION_COLUMNS = ["model", "method", "% rank reduction", "layers", "calibration", "windows", "tokens per window",
                       "calibration tokens", "corpus", "mode", "ppl increase %", CI_COLUMN, "Δ log ppl"]


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
             CI_COLUMN: r.ppl_increase_ci, "Δ log ppl": r.log_ppl_increase} for r in d.itertuples()]
    return (pd.DataFrame(rows, columns=CALIBRATION_COLUMNS)
            .sort_values(["model", "layers", "method", "% rank reduction", "mode", "corpus", "tokens per window",
                          "calibration tokens"]).reset_index(drop=True))


def calibration_label(windows, seq_len, corpus, mode) -> str:
    """E.g. "16 × 1,024 stdlib" or "16 × 1,024 stdlib-tests, sequential"."""
    return f"{int(windows)} × {int(seq_len):,} {corpus}" + (f", {mode}" if mode != "oneshot" else "")


PASS_COLUMNS = ["model", "method", "layers", "rank", "setting", "ppl increase %", CI_COLUMN, "Δ log ppl",
                "pass@1 %", "pass@1 CI low %", "pass@1 CI high %", "pass@1 relative to dense %"]
# what makes a HumanEval run and a perplexity run the same compression: everything of analysis.results.SETTING but
# the evaluation (the rank's unit names a budget's allocation; ``setting`` names extra stages: lora, quantize, ...)
# ``corpus`` is the validation text (a HumanEval run records the config's, which its perplexity twin must share), and
# the calibration keys say which windows the statistics came from (corpus, random draw, count, length)
SAME_COMPRESSION = ["model", "method", "setting", "calibration", "layers", "blocks", "rank_unit", "rank_value",
                    "quant_bits", "prune", "corpus", "calibration_corpus", "calibration_draw", "calibration_windows",
                    "calibration_seq_len"]


def _same_compression_key(df: pd.DataFrame) -> pd.DataFrame:
    """The join key, with missing values made comparable (NaN never equals NaN in a merge; a frame built by hand may
    lack keys, which then count as empty)."""
    return df.assign(**{k: (df[k].astype(object).where(df[k].notna(), "") if k in df else "")
                        for k in SAME_COMPRESSION})


def humaneval_vs_perplexity(df: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Greedy pass@1 next to the perplexity increase of the *same* compression: a HumanEval run is paired only with a
    perplexity run equal in every key of ``SAME_COMPRESSION`` (method, layers, rank unit -- a budget's allocation
    included -- and value, stages, calibration mode, block subset, quantization, pruning, validation corpus, and
    the calibration windows: corpus, draw, count, length). The dense model (no
    stage) is each model's first row, with no increase by definition. Per model, the Spearman rank correlation
    between Δ log ppl and pass@1 over the paired points (dense included): {model: (rho, n)}."""
    df = with_ci(df)
    greedy = df.get("humaneval_preset", pd.Series("greedy", index=df.index)).fillna("greedy") == "greedy"
    ev = _same_compression_key(df[(df["eval"] == "humaneval") & (df.skip_first.fillna(0).astype(int) == 0)
                                  & greedy])
    ppl = _same_compression_key(df[(df["eval"] == "perplexity") & (df.skip_first.fillna(0).astype(int) == 0)
                                   & (df.method != "dense")].copy())
    ppl["log_ppl_increase"] = np.log(ppl.perplexity.astype(float)) - np.log(ppl.dense_perplexity.astype(float))
    ev = ev.drop_duplicates(SAME_COMPRESSION)
    ppl = ppl.drop_duplicates(SAME_COMPRESSION)
    plain_dense = ev[(ev.method == "dense") & (ev.setting == "") & (ev.quant_bits == "") & (ev.prune == "")]
    dense_pass = plain_dense.groupby("model").pass_at_1.first()
    both = ev[ev.method != "dense"].merge(
        ppl[SAME_COMPRESSION + ["perplexity_increase_percent", "ppl_increase_ci", "log_ppl_increase"]],
        on=SAME_COMPRESSION, how="inner", suffixes=("", "_ppl"))
    rows = []
    for r in pd.concat([plain_dense.drop_duplicates("model"), both]).itertuples():
        dense = r.method == "dense"
        rows.append({"model": r.model, "method": r.method, "layers": "" if dense else r.layers,
                     "rank": "" if dense else f"{r.rank_unit} {r.rank_value:g}", "setting": r.setting,
                     "ppl increase %": 0.0 if dense else r.perplexity_increase_percent_ppl,
                     CI_COLUMN: "" if dense else r.ppl_increase_ci_ppl,
                     "Δ log ppl": 0.0 if dense else r.log_ppl_increase, "pass@1 %": r.pass_at_1,  # results: %
                     "pass@1 CI low %": r.pass_at_1_ci_low if pd.notna(r.pass_at_1_ci_low) else None,
                     "pass@1 CI high %": r.pass_at_1_ci_high if pd.notna(r.pass_at_1_ci_high) else None,
                     "pass@1 relative to dense %": 100 * r.pass_at_1 / dense_pass[r.model] if r.model in dense_pass
                     else None})
    t = pd.DataFrame(rows, columns=PASS_COLUMNS).sort_values(["model", "Δ log ppl", "method"]).reset_index(drop=True)
    rho = {}
    for model, g in t.groupby("model"):
        if len(g) >= 3:
            ranks = g[["Δ log ppl", "pass@1 %"]].rank()
            rho[model] = (float(ranks["Δ log ppl"].corr(ranks["pass@1 %"])), len(g))
    return t, rho


NOISE_COLUMNS = ["model", "layers", "method", "% rank reduction", "Δ log ppl, clean model",
                 "Δ log ppl, noisy model", "noisy / clean", "noisy - clean: 95 % CI",
                 "noise alone (Δ log ppl of the noisy dense model)"]


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
        ci = CI_MISSING
        deltas = [getattr(r, "window_deltas", None), base.get("window_deltas", pd.Series([None])).iloc[0],
                  ref.get("window_deltas", pd.Series([None])).iloc[0] if len(ref) else None]
        if all(isinstance(x, np.ndarray) for x in deltas):  # the same windows throughout
            ci = fmt(difference_interval(deltas[0] - deltas[1], deltas[2]))
        on_noisy = float(np.log(float(r.perplexity)) - np.log(float(base.perplexity.iloc[0])))
        on_clean = float(ref.log_ppl_increase.iloc[0]) if len(ref) else None
        rows.append({"model": r.model, "layers": r.layers, "method": r.method, "% rank reduction": r.rank_value,
                     "Δ log ppl, clean model": on_clean, "Δ log ppl, noisy model": on_noisy,
                     "noisy / clean": on_noisy / on_clean if on_clean else None, "noisy - clean: 95 % CI": ci,
                     "noise alone (Δ log ppl of the noisy dense model)": noise})
    return pd.DataFrame(rows, columns=NOISE_COLUMNS)


def _largest(by_layers: pd.Series, parts: list[str]) -> str:
    """The kind with the largest Δ alone and its share of the sum."""
    s = by_layers[parts]
    return f"{s.idxmax()} ({100 * s.max() / s.sum():.0f} %)"


SIZE_COLUMNS = ["layers", "method", "% rank reduction", "model", "params (B)", "dense ppl", "ppl increase %",
                CI_COLUMN, "Δ log ppl", "% of these layers' params removed"]


def size_table(df: pd.DataFrame) -> pd.DataFrame:
    """Diagnosis Q6 (size trend): the same compression (layers, method, % rank reduction) on each model, every
    block and the profile's calibration, smallest model first."""
    d = with_log_increase(df)
    d = d[(d.setting.fillna("") == "") & (d.blocks.fillna("") == "") & (d.calibration == "oneshot")]
    rows = [{"layers": r.layers, "method": r.method, "% rank reduction": r.rank_value, "model": r.model,
             "params (B)": r.params_dense / 1e9, "dense ppl": r.dense_perplexity,
             "ppl increase %": r.perplexity_increase_percent, CI_COLUMN: r.ppl_increase_ci,
             "Δ log ppl": r.log_ppl_increase, "% of these layers' params removed": r.target_params_removed_percent}
            for r in d.drop_duplicates(["model", "layers", "method", "rank_value"]).itertuples()]
    t = pd.DataFrame(rows, columns=SIZE_COLUMNS)
    return t.sort_values(["layers", "method", "% rank reduction", "params (B)"]).reset_index(drop=True)

"""Tables from the results frame, with the paper's values side by side.

Absolute numbers cannot match across models and data, so the comparison is of *relative* changes:
perplexity increase over the dense model, pass@1 change from the dense model. Paper values are linearly
interpolated at our % rank reduction within each paper model's rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from analysis.intervals import CI_COLUMN, with_ci
from analysis.results import SETTING

PAPER_DIR = Path(__file__).parent / "paper"


def paper(name: str) -> pd.DataFrame:
    return pd.read_csv(PAPER_DIR / f"{name}.csv")


def paper_perplexity_increase() -> pd.DataFrame:
    """Tables 3-4 as % perplexity increase over each model's full-rank row."""
    t = paper("tables3_4_perplexity")
    base = t[t.percent_rank_reduction == 0].set_index("name").perplexity
    t = t.assign(perplexity_increase_percent=100 * (t.perplexity / t.name.map(base) - 1))
    return t


def _interp(x, xs, ys):
    order = np.argsort(xs)
    xs, ys = np.asarray(xs)[order], np.asarray(ys)[order]
    return float(np.interp(x, xs, ys)) if xs.min() <= x <= xs.max() else float("nan")


def perplexity_table(df: pd.DataFrame, paper_models=("CodeGen-350M-mono", "StarCoder-3B", "StarCoder-16B")):
    """Ours (one row per model, layer kind, method, % reduction) next to the paper's all-layer increase
    (empty for our runs of a single layer kind, which the paper's Tables 3-4 do not cover)."""
    d = with_ci(df[df["eval"] == "perplexity"]).copy()
    d = d[d.method != "dense"].drop_duplicates([k for k in SETTING if k in d])  # one row per setting and variant
    p = paper_perplexity_increase()
    for name in paper_models:  # the paper's rows decompose every layer: compared with our all-layer runs only
        rows = p[p.name == name]
        d[f"paper {name} (%)"] = [_interp(x, rows.percent_rank_reduction, rows.perplexity_increase_percent)
                                  if layers in ("all", "all-grouped") else float("nan")
                                  for x, layers in zip(d.rank_value, d.layers)]
    cols = ["model", "layers", "method", "rank_value", *_variant(d), "ranks", "dense_perplexity", "perplexity",
            "perplexity_increase_percent", "ppl_increase_ci", "params_reduction_percent"] + [
        f"paper {n} (%)" for n in paper_models]
    return d.sort_values(["model", "layers", "method", "rank_value", *_variant(d)])[cols].rename(columns={
        "rank_value": "% rank reduction", "perplexity_increase_percent": "increase (%)", "ppl_increase_ci": CI_COLUMN,
        "params_reduction_percent": "params reduction (%)"}).reset_index(drop=True)


def _ci(lo, hi) -> str:
    return "" if pd.isna(lo) or pd.isna(hi) else f"[{lo:.3g}, {hi:.3g}]"


def humaneval_table(df: pd.DataFrame) -> pd.DataFrame:
    """Table 1 side by side with the paper: per model, method, layers and rank (and config variant), greedy pass@1
    and the sampled (code_eval: n = 10, T = 0.2) pass@1 and pass@10, each with its 95 % bootstrap interval over
    tasks (with several seeds: the seeds' mean, tasks resampled with all their seeds), the change from the same
    preset's dense run, and the paper's StarCoder-16B values at the same % rank reduction (interpolated between
    its ranks). Where one point was sampled with several seed sets (seed 0, then more), the run with the most seeds
    stands for it: it holds the others' samples (lord.humaneval.seed_reuse)."""
    d = df[df["eval"] == "humaneval"].copy()
    if d.empty:
        return d
    d = d.sort_values("humaneval_seeds", ascending=False, kind="stable")  # the run with the most seeds first
    t1 = paper("table1_humaneval")
    sc = t1[t1.family == "starcoder"].sort_values("percent_rank_reduction")
    key = ["model", "method", "layers", "rank_value"]
    # what else tells these rows' compressions apart (a folder of ad-hoc runs: stages, budgets, quantization, ...)
    key += [k for k in SETTING if k not in (*key, "eval", "humaneval_preset", "variant") and k in d
            and d[k].dropna().astype(str).nunique() > 1]  # two values besides "none" (a dense run's rank unit)
    if "variant" in d and (d.assign(v=d.variant.fillna("")).groupby([*key, "humaneval_preset"]).v.nunique() > 1).any():
        key.append("variant")  # runs of one point that differ in config (among these rows): each its own row
    labels = {"greedy": "greedy", "code_eval": "sampled"}
    columns = ["model", "method", "layers", "% rank reduction", *key[4:], "ranks"]  # key[4:]: settings, variant
    for label in labels.values():
        columns += [f"{label} pass@1", f"{label} pass@1 95 % CI", f"{label} pass@1 change from dense"]
    columns += ["sampled pass@10", "sampled pass@10 95 % CI", "sampled: seeds, max new tokens",
                "paper StarCoder-16B pass@1", "paper StarCoder-16B pass@10"]
    out = []
    for point, g in d.groupby(key, sort=True, dropna=False):
        model, method, layers, rank = point[:4]
        row = dict(zip(["model", "method", "layers", "% rank reduction", *key[4:]], point)) | {
            "ranks": g.ranks.iloc[0]}
        for preset, label in labels.items():
            r = g[g.humaneval_preset == preset]
            dense = d[(d.model == model) & (d.method == "dense") & (d.humaneval_preset == preset)]
            if "setting" in dense:  # the plain dense model, not a trained, pruned or quantized one
                dense = dense[dense.setting.fillna("") == ""]
            base = dense.pass_at_1.iloc[0] if len(dense) else float("nan")
            if not len(r):
                continue
            r = r.iloc[0]
            row[f"{label} pass@1"] = r.pass_at_1
            row[f"{label} pass@1 95 % CI"] = _ci(r.pass_at_1_ci_low, r.pass_at_1_ci_high)
            row[f"{label} pass@1 change from dense"] = r.pass_at_1 - base
            if label == "sampled":
                row["sampled pass@10"] = r.pass_at_10
                row["sampled pass@10 95 % CI"] = _ci(r.pass_at_10_ci_low, r.pass_at_10_ci_high)
                row["sampled: seeds, max new tokens"] = f"{int(r.humaneval_seeds)}, {r.max_new_tokens}"
        row["paper StarCoder-16B pass@1"] = _interp(rank, sc.percent_rank_reduction, sc.pass_at_1)
        row["paper StarCoder-16B pass@10"] = _interp(rank, sc.percent_rank_reduction, sc.pass_at_10)
        out.append(row)
    t = pd.DataFrame(out)
    t = t[[c for c in columns if c in t]]  # a fixed column order, whichever preset came first
    return t.sort_values(["model", "method", "layers", "% rank reduction"], key=lambda c: c if c.name != "method"
                         else c.map(lambda m: (m != "dense", m))).reset_index(drop=True)


def speed_table(df: pd.DataFrame) -> pd.DataFrame:
    d = df[df["eval"] == "speed"]
    cols = ["model", "layers", "rank_value", *_variant(d), "ranks", "relative_time_512", "relative_time_1024",
            "decode_speedup", "relative_size_params", "relative_size_disk"]
    return d.sort_values(["model", "rank_value"])[cols].rename(columns={"rank_value": "% rank reduction"}) \
        .reset_index(drop=True)


def _variant(d: pd.DataFrame) -> list[str]:
    """["variant"] when runs of one point differ in config (analysis.results.SETTING), else []."""
    return ["variant"] if "variant" in d and d.variant.fillna("").astype(bool).any() else []


def method_table(df: pd.DataFrame) -> pd.DataFrame:
    """Methods at equal parameter count: the same layers and rank give every method the same size."""
    d = with_ci(df[(df["eval"] == "perplexity") & (df.method != "dense")])
    if d.empty:
        return d
    key = ["model", "layers", "rank_value", *_variant(d)]  # lord_meanfix differs only by the biases it adds
    t = d.pivot_table(index=key, columns="method", values="perplexity_increase_percent", aggfunc="first")
    ci = d.pivot_table(index=key, columns="method", values="ppl_increase_ci", aggfunc="first")
    t = t.join(ci.rename(columns=lambda m: f"{m}: 95 % CI"))[[c for m in t.columns for c in (m, f"{m}: 95 % CI")]]
    params = d.groupby(key).params_compressed.agg(["min", "max"])
    t.insert(0, "params_compressed", [f"{lo:,}" if lo == hi else f"{lo:,}-{hi:,}" for lo, hi in params.values])
    return t.reset_index().rename(columns={"rank_value": "% rank reduction"})


def run_times_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per experiment, model, evaluation and device: the runs and the time they recorded (the sum of each run's
    ``timings``; a sweep in one process also spends seconds between runs, so a sweep's wall time is a little more)."""
    d = df.dropna(subset=["run_seconds"])
    if d.empty:
        return pd.DataFrame()
    g = d.fillna({"device": "unknown"}).groupby(["experiment", "model", "eval", "device"]).run_seconds
    t = pd.DataFrame({"runs": g.size(), "minutes, all runs": g.sum() / 60, "minutes per run, median": g.median() / 60})
    return t.reset_index()


def dense_baselines_table(df: pd.DataFrame) -> pd.DataFrame:
    """The dense perplexity each run measured as its own baseline, per model and validation text (corpus, split
    hash, tokens), as recorded (8 significant digits): the same weights on the same windows differ only by the
    float32 kernels of the machine a session ran on. Runs with an intervention that changes the dense model itself
    (a setting such as quantization noise) are left out; ``relative spread`` is (largest - smallest) / smallest of
    the group."""
    d = df[(df["eval"] == "perplexity") & (df.setting.fillna("") == "") & df.dense_perplexity.notna()
           & (df.model_source.fillna("") != "lord-compressed")]
    if d.empty:
        return pd.DataFrame()
    d = d.assign(split=d.validation_sha256.fillna("").str[:12], corpus=d.corpus.fillna(""))
    rows = []
    for (model, corpus, split, tokens), g in d.groupby(["model", "corpus", "split", "n_tokens"], sort=True):
        lo, hi = g.dense_perplexity.min(), g.dense_perplexity.max()
        for value, runs in g.dense_perplexity.value_counts().sort_index().items():
            rows.append({"model": model, "corpus": corpus, "validation split": split, "tokens": int(tokens),
                         "dense perplexity": f"{value:#.8g}", "results": int(runs),
                         "relative spread": f"{(hi - lo) / lo:.2g}"})
    return pd.DataFrame(rows)


def write(table: pd.DataFrame, out: Path, caption: str, numparse: bool = True) -> list[Path]:
    """Markdown (for the docs' generated regions) and LaTeX (for papers), each with its caption. ``numparse=False``
    prints text cells as they are (a number kept as text keeps all its digits)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    md, tex = out.with_suffix(".md"), out.with_suffix(".tex")
    md.write_text(f"{caption}\n\n" + (table.to_markdown(index=False, floatfmt=".4g", disable_numparse=not numparse)
                                      if len(table) else "(no results yet)") + "\n")
    tex.write_text(table.to_latex(index=False, float_format="%.4g", caption=caption, label=f"tab:{out.stem}",
                                  escape=True) if len(table) else f"% {caption}: no results yet\n")
    return [md, tex]

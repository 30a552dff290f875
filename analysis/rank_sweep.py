"""Perplexity against % rank reduction, one line per method (the main job's table and figure)."""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from analysis.intervals import CI_COLUMN, with_ci  # noqa: E402


def rank_sweep_table(df: pd.DataFrame) -> pd.DataFrame:
    cols = ["model", "layers", "method", "rank_value", "ranks", "perplexity", "perplexity_increase_percent",
            "ppl_increase_ci", "params_compressed", "params_reduction_percent"]
    return (with_ci(df).sort_values(["model", "layers", "method", "rank_value"])[cols]
            .rename(columns={"ppl_increase_ci": CI_COLUMN}).reset_index(drop=True))


def plot_rank_sweep(df: pd.DataFrame, out: str | Path, title: str = "") -> list[Path]:
    fig, ax = plt.subplots(figsize=(6, 4))
    dense = df[df.method == "dense"]
    for method, g in df[df.method != "dense"].groupby("method"):
        g = g.sort_values("rank_value")
        ax.plot(g.rank_value, g.perplexity, marker="o", label=method)
    if len(dense):
        ax.axhline(dense.perplexity.iloc[0], color="grey", ls="--", label="dense")
    ax.set_xlabel("% rank reduction (of each matrix's d_min)")
    ax.set_ylabel("perplexity (validation, corpus-level)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out.with_suffix(".png"), out.with_suffix(".pdf")]
    for p in paths:
        fig.savefig(p, dpi=150, metadata={"CreationDate": None} if p.suffix == ".pdf" else None)
    plt.close(fig)
    return paths


def report(folder: str | Path) -> None:
    """A preset's last step (``hydra.sweeper.report``): the perplexity table (printed and ``summary.md``) and
    figure (``rank_sweep.png``) of every run in ``folder``; files that could not be read are listed."""
    from analysis.results import load_results

    folder = Path(folder)
    df, problems = load_results(folder)
    ppl = df[df["eval"] == "perplexity"] if len(df) else df
    if len(ppl):
        table = rank_sweep_table(ppl)
        print(table.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
        (folder / "summary.md").write_text(table.to_markdown(index=False, floatfmt=".4g") + "\n")
        profiles = ", ".join(sorted({str(p) for p in ppl.profile}))
        figs = plot_rank_sweep(ppl, folder / "rank_sweep", title=f"{folder.name}, profile={profiles}")
        print(f"table: {folder / 'summary.md'}  figure: {figs[0]}")
    for p in problems:
        print(f"skipped {p['path']}: {p['reason']}", file=sys.stderr)

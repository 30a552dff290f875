"""Figures (PNG and PDF) from the results frame and the analytic tables; each is readable on its own."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from analysis.tables import paper_perplexity_increase  # noqa: E402


def _save(fig, out: Path) -> list[Path]:
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out.with_suffix(".png"), out.with_suffix(".pdf")]
    fig.tight_layout()
    for p in paths:
        fig.savefig(p, dpi=150)
    plt.close(fig)
    return paths


def _style(ax, xlabel: str, ylabel: str, title: str, log: bool = False, legend_size: float = 7,
           symlog: bool = False) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    if log:
        ax.set_yscale("log")
    if symlog:  # percentages that may be negative, near zero or in the millions
        ax.set_yscale("symlog", linthresh=1)
        ys = [y for line in ax.lines for y in np.asarray(line.get_ydata(), dtype=float).ravel() if np.isfinite(y)]
        if ys:  # autoscaling in symlog space pads a few-% dip down to -1e7: pad by a factor of 3 instead
            lo, hi = min(ys), max(ys)
            ax.set_ylim(min(lo * 3, -1) if lo < 0 else -0.5, hi * 3 if hi > 0 else 1)
    ax.grid(alpha=0.3, which="both" if log or symlog else "major")
    ax.legend(fontsize=legend_size)


def _note(ax, text):
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="grey")


def _v(variant) -> str:
    """A legend suffix naming how runs of one point differ (analysis.results: variant), if they do."""
    return f" [{variant}]" if isinstance(variant, str) and variant else ""


def fig1(df: pd.DataFrame, out: Path, subtitle: str = "") -> list[Path]:
    """Perplexity increase vs % rank reduction, all layers: ours per model and method (solid), the paper's
    (dashed). Symmetric-log axis: linear within ±1 %, logarithmic beyond, so small and huge changes both read."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    d = df[(df["eval"] == "perplexity") & (df.layers.isin(["all", "all-grouped"])) & (df.method != "dense")]
    for (model, method, variant), g in d.groupby(["model", "method", "variant"]):
        g = g.sort_values("rank_value")
        ax.plot(g.rank_value, g.perplexity_increase_percent, marker="o", ls="-" if method == "lord" else "-.",
                label=f"{model}, {method} (ours){_v(variant)}")
    p = paper_perplexity_increase()
    for name, g in p.groupby("name"):
        g = g[g.percent_rank_reduction > 0].sort_values("percent_rank_reduction")
        ax.plot(g.percent_rank_reduction, g.perplexity_increase_percent, ls="--", lw=1, alpha=0.6,
                label=f"{name}, lord (paper)")
    if d.empty:
        _note(ax, "no all-layer results yet")
    _style(ax, "% rank reduction (all linear layers)", "perplexity increase over dense (%)",
           f"Fig. 1: perplexity vs rank reduction{subtitle}", symlog=True, legend_size=6)
    return _save(fig, out)


def fig2(df: pd.DataFrame, out: Path, subtitle: str = "") -> list[Path]:
    """Perplexity increase vs % parameter reduction, one line per layer kind (and LoRD variant)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    d = df[(df["eval"] == "perplexity") & (df.method.isin(["lord", "lord_meanfix"]))]
    for (model, layers, method, variant), g in d.groupby(["model", "layers", "method", "variant"]):
        g = g.sort_values("params_reduction_percent")
        ax.plot(g.params_reduction_percent, g.perplexity_increase_percent, marker="o",
                ls="-" if method == "lord" else "-.", label=f"{layers}, {method} ({model}){_v(variant)}")
    if d.empty:
        _note(ax, "no LoRD perplexity results yet")
    ax.axvline(0, color="grey", lw=0.8)
    _style(ax, "% parameter reduction of the whole model (negative: decomposition adds parameters)",
           "perplexity increase over dense (%)", f"Fig. 2: layer sensitivity{subtitle}", symlog=True,
           legend_size=6)
    return _save(fig, out)


def fig3(df: pd.DataFrame, out: Path, subtitle: str = "") -> list[Path]:
    """Relative forward time (512, 1,024 tokens), decode speed and size vs % rank reduction."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    d = df[df["eval"] == "speed"].sort_values("rank_value")
    for col, label in [("relative_time_512", "time, 512 tokens"), ("relative_time_1024", "time, 1,024 tokens"),
                       ("relative_size_params", "model size (parameters)")]:
        ax.plot(d.rank_value, d[col], marker="o", label=label)
    ax.plot(d.rank_value, 1 / d.decode_speedup, marker="s", label="time per decoded token")
    if d.empty:
        _note(ax, "no speed results yet")
    ax.axhline(1, color="grey", lw=0.8)
    _style(ax, "% rank reduction (MLP-down)", "relative to the dense model", f"Fig. 3: time and size vs rank{subtitle}")
    return _save(fig, out)


def fig4(curves: pd.DataFrame, kinds: pd.DataFrame, out: Path) -> list[Path]:
    """Eq. 6: % parameter change vs % rank reduction per aspect ratio; real layer kinds marked at parity."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for a, g in curves.groupby("alpha"):
        ax.plot(g.percent_rank_reduction, g.percent_param_change, label=f"α = {a:g}")
    markers = "^svDoP*X"
    for j, (model, g) in enumerate(kinds.groupby("model", sort=False)):
        for _, k in g.drop_duplicates("alpha").iterrows():
            same = ", ".join(g[g.alpha == k.alpha].kind)
            ax.plot(k.parity_reduction, -4 - 5 * j, markers[j % len(markers)], color="k", ms=5, ls="none",
                    label=f"{model.split('/')[-1]}: {same} (α={k.alpha:.3g})")
    ax.axhline(0, color="grey", lw=0.8)
    _style(ax, "% rank reduction", "% change in parameters (Eq. 6)",
           "Fig. 4: parity point by aspect ratio (where a line crosses zero); markers: real layers", legend_size=5.5)
    ax.legend(fontsize=5.5, ncol=2, loc="upper right")  # many entries: two columns keep the markers visible
    return _save(fig, out)


def fig7(sizes: pd.DataFrame, out: Path) -> list[Path]:
    """4-bit model size vs parameter count: LoRD (dense) vs sparse formats at the same parameter count."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for fmt, g in sizes.groupby("format", sort=False):
        g = g.sort_values("params")
        ax.plot(g.params / 1e9, g.size_gb, marker="o", label=fmt)
    _style(ax, f"parameters (billions), {sizes.model.iloc[0]} {sizes.kind.iloc[0]} at the paper's ranks",
           "model size at 4 bits per value (GB)", "Fig. 7: storage of LoRD vs pruned models at equal parameter count",
           log=True)
    return _save(fig, out)


def methods_figure(df: pd.DataFrame, out: Path, subtitle: str = "") -> list[Path]:
    """lord vs lord_meanfix vs whiten vs svd: perplexity increase vs parameters, per layer selection."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    d = df[(df["eval"] == "perplexity") & (df.method != "dense")]
    several = d.model.nunique() > 1
    for (model, method, layers, variant), g in d.groupby(["model", "method", "layers", "variant"]):  # per model
        g = g.sort_values("params_compressed")
        ax.plot(g.params_compressed / 1e6, g.perplexity_increase_percent, marker="o",
                label=(f"{model}: {method}, {layers}" if several else f"{method}, {layers}") + _v(variant))
    if d.empty:
        _note(ax, "no perplexity results yet")
    _style(ax, "parameters after compression (millions)", "perplexity increase over dense (%)",
           f"Methods at equal parameter count{subtitle}", symlog=True)
    return _save(fig, out)

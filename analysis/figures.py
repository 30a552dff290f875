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
    paths = [out.parent / f"{out.name}.png", out.parent / f"{out.name}.pdf"]  # names may hold dots (0.5b)
    fig.tight_layout()
    for p in paths:
        fig.savefig(p, dpi=150, metadata={"CreationDate": None} if p.suffix == ".pdf" else None)
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


def _log_axis(ax, ylabel: str) -> None:
    """Δ log ppl spans 1e-4 to ~2 and may dip below zero within noise: linear within ±1e-3, logarithmic beyond."""
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, which="both")


def _label_delta(ax, xlabel: str, title: str) -> None:
    """Axis labels, title, Δ log ppl scale and legend of one ablation panel."""
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=9)
    _log_axis(ax, "Δ log perplexity")
    ax.legend(fontsize=6)


def _finish_delta(fig, ax, out: Path, empty: str | None, xlabel: str | None = None, title: str = "") -> list[Path]:
    """Label a one-panel figure (when ``xlabel`` is given), say ``empty`` on ``ax`` when there was nothing to
    draw, and save it."""
    if xlabel is not None:
        _label_delta(ax, xlabel, title)
    if empty:
        _note(ax, empty)
    return _save(fig, out)


def ablation_layers(df: pd.DataFrame, out: Path) -> list[Path]:
    """Diagnosis Q1: Δ log ppl per layer selection, against % rank reduction (top) and % of the selection's own
    parameters removed (bottom), one column per method; dashed: the sum of the single kinds' Δs."""
    from analysis.ablations import COMPONENTS, additivity_table, with_log_increase

    d = with_log_increase(df)
    d = d[d.skip_first.fillna(0).astype(int) == 0]
    methods = sorted(d.method.unique()) or ["none"]
    fig, axes = plt.subplots(2, len(methods), figsize=(5.2 * len(methods), 8), squeeze=False)
    add = additivity_table(d)
    colors = dict(zip(sorted(d.layers.unique()), plt.cm.tab10.colors))
    for j, method in enumerate(methods):
        g = d[d.method == method]
        for i, (x, xlabel) in enumerate([("rank_value", "% rank reduction"),
                                         ("target_params_removed_percent", "% of these layers' params removed")]):
            ax = axes[i][j]
            for layers, h in g.groupby("layers"):
                h = h.sort_values("rank_value")
                whole = layers in COMPONENTS
                ax.plot(h[x], h.log_ppl_increase, marker="o", color=colors[layers], lw=2.2 if whole else 1.2,
                        label=layers)
                s = add[(add.method == method) & (add.layers == layers)].dropna(
                    subset=["Σ Δ log ppl (each kind alone)"])
                if whole and len(s):
                    xs = h.set_index("rank_value", drop=False).loc[s["% rank reduction"], x]
                    ax.plot(xs.values, s["Σ Δ log ppl (each kind alone)"], ls="--", color=colors[layers],
                            label=f"{layers}: sum of kinds alone")
            if x == "target_params_removed_percent":
                ax.axvline(0, color="grey", lw=0.8)
            _label_delta(ax, xlabel, method)
    return _finish_delta(fig, axes[0][0], out, "no ablation_layers results" if d.empty else None)


def ablation_blocks(df: pd.DataFrame, out: Path) -> list[Path]:
    """Diagnosis Q1, per block: Δ log ppl when one block alone is compressed, one line per (method, rank,
    layers); dotted: all blocks together divided by the number of blocks (the per-block level if damage were
    spread evenly and added up)."""
    from analysis.ablations import block_table

    t = block_table(df)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, ((method, rank, layers), g) in enumerate(t.groupby(["method", "% rank reduction", "layers"])):
        color = plt.cm.tab10.colors[i % 10]
        one = g[g.block.str.fullmatch(r"\d+")]
        ax.plot(one.block.astype(int), one["Δ log ppl"], marker="o", ms=3, color=color,
                label=f"{layers}, {method}, {rank:g} %")
        together = g[g.block == "all together"]
        if len(together):
            ax.axhline(float(together["Δ log ppl"].iloc[0]) / len(one), color=color, ls=":", lw=1,
                       label=f"all together / {len(one)}")
    return _finish_delta(fig, ax, out, "no ablation_blocks results" if t.empty else None,
                         "block compressed alone (the others dense)", "Which blocks are fragile")


def ablation_sizes(df: pd.DataFrame, out: Path) -> list[Path]:
    """Diagnosis Q6: Δ log ppl of the same compression against the model's size, one line per (method, % rank
    reduction); a model that degrades less with size would slope down."""
    from analysis.ablations import size_table

    t = size_table(df)
    fig, ax = plt.subplots(figsize=(6.5, 4.3))
    for (layers, method, rank), g in t.groupby(["layers", "method", "% rank reduction"]):
        ax.plot(g["params (B)"], g["Δ log ppl"], marker="o", ls="-" if method == "lord_meanfix" else "--",
                label=f"{layers}, {method}, {rank:g} %")
        for _, r in g.iterrows():
            ax.annotate(r.model, (r["params (B)"], r["Δ log ppl"]), fontsize=6)
    ax.set_xscale("log")
    return _finish_delta(fig, ax, out, "no ablation_sizes results" if t.empty else None,
                         "parameters (billions, log scale)", "Same compression, three model sizes")


def ablation_calibration(df: pd.DataFrame, out: Path) -> list[Path]:
    """Diagnosis Q2: Δ log ppl against calibration tokens, one panel per % rank reduction; lines: oneshot stdlib
    windows of the profile's length (8-64 windows), markers: other window lengths, the test-suite corpus, and
    sequential calibration."""
    from analysis.ablations import calibration_table

    t = calibration_table(df)
    ranks = sorted(t["% rank reduction"].unique()) or [0]
    fig, axes = plt.subplots(1, len(ranks), figsize=(5.4 * len(ranks), 4.4), squeeze=False)
    colors = dict(zip(sorted(t.method.unique()), plt.cm.tab10.colors))
    markers = {"len": "s", "corpus": "^", "sequential": "D"}
    for ax, rank in zip(axes[0], ranks):
        g = t[t["% rank reduction"] == rank]
        for (method, layers), h in g.groupby(["method", "layers"]):
            base = h[(h["mode"] == "oneshot") & (h.corpus == "stdlib")]
            longest = base["tokens per window"].max()
            line = base[base["tokens per window"] == longest].sort_values("calibration tokens")
            ax.plot(line["calibration tokens"], line["Δ log ppl"], marker="o", color=colors[method],
                    label=f"{layers}, {method}: windows of {longest:,}")
            for _, r in h.drop(line.index).iterrows():
                kind = ("sequential" if r["mode"] != "oneshot" else "corpus" if r.corpus != "stdlib" else "len")
                ax.scatter(r["calibration tokens"], r["Δ log ppl"], marker=markers[kind], color=colors[method], s=36,
                           zorder=3, label=f"{method}: {r.calibration}")
        ax.set_xscale("log", base=2)
        _label_delta(ax, "calibration tokens", f"{rank:g} % rank reduction")
    return _finish_delta(fig, axes[0][0], out, "no ablation_calibration results" if t.empty else None)


def humaneval_vs_perplexity(table: pd.DataFrame, rho: dict, out: Path) -> list[Path]:
    """Diagnosis Q7: greedy pass@1 (with its confidence interval) against the perplexity increase of the same
    compression (the same method, layers, rank and stages), one series per (model, layers, method, stages), each
    point labelled with its rank; the dense model starts every series of its model."""
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for (model, layers, method, setting), g in table[table.method != "dense"].groupby(
            ["model", "layers", "method", "setting"]):
        dense = table[(table.model == model) & (table.method == "dense")]
        g = pd.concat([dense, g]).sort_values("Δ log ppl")
        low = (g["pass@1 %"] - g["pass@1 CI low %"]).fillna(0)
        high = (g["pass@1 CI high %"] - g["pass@1 %"]).fillna(0)
        ax.errorbar(g["Δ log ppl"], g["pass@1 %"], yerr=[low, high], marker="o", capsize=3, lw=0.8,
                    label=f"{layers}, {method}{setting}")
        for x, y, rank in zip(g["Δ log ppl"], g["pass@1 %"], g["rank"]):
            ax.annotate(rank or "dense", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=5)
    rhos = "; ".join(f"{m}: Spearman ρ = {r:.2f}, n = {n}" for m, (r, n) in rho.items())
    _style(ax, "Δ log perplexity (same compression)", "HumanEval pass@1 (%), greedy",
           "Is pass@1 predicted by perplexity?" + (f"\n{rhos}" if rhos else ""), legend_size=6)
    if table.empty:
        _note(ax, "no HumanEval run with a perplexity run of the same setting")
    return _save(fig, out)


def ablation_outliers(df: pd.DataFrame, out: Path) -> list[Path]:
    """Diagnosis Q3: Δ log ppl against the number of leading window positions left out of the statistics."""
    from analysis.ablations import with_log_increase

    d = with_log_increase(df)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for (layers, method, rank), g in d.groupby(["layers", "method", "rank_value"]):
        g = g.sort_values("skip_first")
        ax.plot(g.skip_first, g.log_ppl_increase, marker="o", ls="-" if method == "lord_meanfix" else "--",
                label=f"{layers}, {method}, {rank:g} %")
    return _finish_delta(fig, ax, out, "no ablation_outliers results" if d.empty else None,
                         "first positions of each window left out of the statistics (skip_first)",
                         "Calibration without attention-sink positions")


def first_position(bench: dict, out: Path) -> list[Path]:
    """The first position's share of each target's output scatter, by block, one line per kind; dotted: the
    share of a typical position (1/seq_len)."""
    rows = pd.DataFrame(bench["per_target"])
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for kind, g in rows.groupby("kind"):
        g = g.sort_values("block")
        ax.plot(g.block, g.share_scatter, marker="o", ms=3, label=kind)
    ax.axhline(1 / bench["seq_len"], color="grey", ls=":", label=f"1/{bench['seq_len']} (a typical position)")
    _style(ax, "block", "share of the output scatter", f"{bench['model']}: what one position (the first) carries",
           log=True)
    return _save(fig, out)


def swiglu(bench: dict, out: Path) -> list[Path]:
    """The relative error of decomposed gate/up projections (dashed: gate, dotted: up) and of MLP-down's input
    ``silu(g) * u`` (solid) by block, one panel per % rank reduction, one colour per method."""
    rows = pd.DataFrame(bench["per_block"])
    reds = bench["reductions"]
    fig, axes = plt.subplots(1, len(reds), figsize=(5.2 * len(reds), 4.2), squeeze=False)
    colors = dict(zip(bench["methods"], plt.cm.tab10.colors))
    for ax, red in zip(axes[0], reds):
        for method, g in rows[rows.reduction == red].groupby("method"):
            g = g.sort_values("block")
            ax.plot(g.block, g.rel_err_h, color=colors[method], label=f"{method}: down's input h")
            ax.plot(g.block, g.rel_err_gate, color=colors[method], ls="--", lw=1, label=f"{method}: gate")
            ax.plot(g.block, g.rel_err_up, color=colors[method], ls=":", lw=1, label=f"{method}: up")
        _style(ax, "block", "relative error (probe windows)",
               f"{bench['model']}: {red:g} % rank reduction of gate/up", log=True, legend_size=6)
    return _save(fig, out)


def spectra(bench: dict, out: Path) -> list[Path]:
    """Share of the energy that each % rank reduction discards, by block and kind: output covariance (solid,
    what LoRD loses on the calibration data) and weights (dashed, what plain SVD loses)."""
    rows = pd.DataFrame(bench["per_target"])
    reds = bench["reductions"]
    fig, axes = plt.subplots(1, len(reds), figsize=(4.6 * len(reds), 4.2), squeeze=False)
    colors = dict(zip(sorted(rows.kind.unique()), plt.cm.tab10.colors))
    for ax, red in zip(axes[0], reds):
        for kind, g in rows.groupby("kind"):
            g = g.sort_values("block")
            ax.plot(g.block, 1 - g[f"output_energy_kept_{red:g}"], marker="o", ms=3, color=colors[kind],
                    label=f"{kind} outputs")
            ax.plot(g.block, 1 - g[f"weight_energy_kept_{red:g}"], ls="--", color=colors[kind], label=f"{kind} weights")
        _style(ax, "block", "share of the energy discarded", f"{bench['model']}: {red:g} % rank reduction", log=True,
               legend_size=6)
    return _save(fig, out)

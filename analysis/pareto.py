"""Quality at equal parameters (``experiment=pareto``): perplexity increase against the share of the selected
layers' parameters removed, per method and rank allocation (``rank.unit=budget``)."""

from __future__ import annotations

import re

from pathlib import Path

import pandas as pd

from analysis.intervals import CI_COLUMN, difference_interval, fmt, with_ci

# (method, allocation, stages tag) -> the name a reader knows it by
KNOWN = {("lord_meanfix", "uniform", ""): "LoRD with mean compensation (lord_meanfix, uniform)",
         ("asvd", "uniform", ""): "ASVD (asvd, uniform)",
         ("whiten", "uniform", ""): "SVD-LLM (whiten, uniform)",
         ("whiten", "svdllm_v2", ""): "SVD-LLM V2 (whiten, svdllm_v2)"}

COLUMNS = ["model", "corpus", "method", "budget %", "% of selection params removed", "ppl increase %", CI_COLUMN,
           "Δ log ppl", "dense targets", "targets selected", "compression s", "peak RSS GiB"]


def budget_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Perplexity runs whose ranks a budget allocated."""
    return df[(df["eval"] == "perplexity") & df.rank_unit.fillna("").str.startswith("budget")]


def label(method: str, rank_unit: str, setting: str) -> str:
    allocation = rank_unit.split("-", 1)[1] if "-" in rank_unit else "uniform"
    setting = setting if isinstance(setting, str) else ""
    if setting.startswith("-neurons"):  # MLP neuron selection; the method decomposed the other layers
        rest = setting[len("-neurons"):]
        return f"MLP neurons + {method}, {allocation}{' ' + rest if rest else ''}"
    return KNOWN.get((method, allocation, setting), f"{method}, {allocation}{' ' + setting if setting else ''}")


def _selected(dense, decomposed):
    """Matrices in the selection: those the allocation kept dense plus those decomposed (``compression.n_targets``)."""
    return None if pd.isna(dense) or pd.isna(decomposed) else int(dense) + int(decomposed)


def pareto_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, method/allocation, budget): the parameters actually removed, the perplexity
    increase (and Δ log ppl), how many matrices stayed dense out of the selection's, and the compression's time
    and peak memory."""
    import numpy as np

    d = with_ci(budget_rows(df))
    rows = []
    for _, r in d.iterrows():
        dense_targets = r.get("dense_targets")
        name = label(r.method, r.rank_unit, r.setting) + (f" [{r.variant}]" if r.get("variant") else "")
        rows.append([r.model, r.get("corpus") or "", name, r.rank_value,
                     r.target_params_removed_percent,
                     r.perplexity_increase_percent, r.ppl_increase_ci, float(np.log(r.perplexity / r.dense_perplexity)),
                     dense_targets, _selected(dense_targets, r.get("n_targets")), r.compression_seconds,
                     None if pd.isna(r.compression_peak_rss_mib) else r.compression_peak_rss_mib / 1024])
    t = pd.DataFrame(rows, columns=COLUMNS)
    return t.sort_values(["model", "corpus", "budget %", "ppl increase %"]).reset_index(drop=True)


def pareto_summary(df: pd.DataFrame) -> pd.DataFrame:
    """The findings page's view: perplexity increase (%) per method (rows) and budget (columns), one block per model and
    validation corpus."""
    t = pareto_table(df)
    if t.empty:
        return t
    index = ["model", "corpus", "method"]
    wide = t.pivot_table(index=index, columns="budget %", values="ppl increase %", aggfunc="first")
    ci = t.pivot_table(index=index, columns="budget %", values=CI_COLUMN, aggfunc="first")
    wide = wide.join(ci.rename(columns=lambda c: f"{c:g} % removed: 95 % CI"))
    wide = wide[[c for b in sorted(t["budget %"].unique()) for c in (b, f"{b:g} % removed: 95 % CI")]]
    wide.columns = [c if isinstance(c, str) else f"{c:g} % removed: ppl +%" for c in wide.columns]
    return wide.reset_index()


def humaneval_rows(df: pd.DataFrame) -> pd.DataFrame:
    """HumanEval runs at a budget, with the dense runs of the same experiments (their baseline)."""
    he = df[df["eval"] == "humaneval"]
    budget = he.rank_unit.fillna("").str.startswith("budget")
    return he[he.experiment.isin(set(he[budget].experiment)) & (budget | (he.method == "dense"))]


def pareto_humaneval_table(df: pd.DataFrame, perplexity: pd.DataFrame | None = None) -> pd.DataFrame:
    """pass@1 (bootstrap CI over tasks) per (model, method/allocation, budget), its change from the dense run of
    the same experiment, and the perplexity increase of the same point in the pareto table of ``perplexity`` (default
    ``df``; same model, corpus, method, allocation, stages and budget; NaN where that point has no perplexity run)."""
    d, ppl = humaneval_rows(df), pareto_table(df if perplexity is None else perplexity)
    rows = []
    for (model, preset), g in d.groupby(["model", "humaneval_preset"]):
        dense = g[g.method == "dense"].pass_at_1
        base = dense.iloc[0] if len(dense) else float("nan")
        for _, r in g[g.method != "dense"].iterrows():
            name = label(r.method, r.rank_unit, r.setting)
            same = ppl[(ppl.model == model) & (ppl.corpus == (r.get("corpus") or "")) & (ppl.method == name)
                       & (ppl["budget %"] == r.rank_value)]["ppl increase %"]
            rows.append([model, preset, name, r.rank_value, r.target_params_removed_percent, r.pass_at_1,
                         r.pass_at_1_ci_low, r.pass_at_1_ci_high, r.pass_at_1 - base, base,
                         same.iloc[0] if len(same) else float("nan")])
    t = pd.DataFrame(rows, columns=["model", "preset", "method", "budget %", "% of selection params removed",
                                    "pass@1", "CI low", "CI high", "change from dense (points)", "dense pass@1",
                                    "ppl increase %"])
    return t.sort_values(["model", "budget %", "pass@1"], ascending=[True, True, False]).reset_index(drop=True)


def method_colours(methods) -> dict[str, str]:
    """One colour per curve name, the same in every panel (a panel that lacks a method does not shift the
    others' colours): the names in sorted order take tab10's colours in turn."""
    palette = [f"C{i}" for i in range(10)]
    return {name: palette[i % len(palette)] for i, name in enumerate(sorted(set(methods)))}


def _bounds(cell) -> tuple[float, float] | None:
    """"[9.55, 17.5]" -> (9.55, 17.5); "n/a" or empty -> None."""
    m = re.fullmatch(r"\[([^,]+), ([^\]]+)\]", str(cell))
    return (float(m.group(1)), float(m.group(2))) if m else None


def pareto_figure(df: pd.DataFrame, out: Path) -> list[Path]:
    """A panel per model (and validation corpus, when there are several), a curve per method: perplexity
    increase (log) against % of the selection removed, with the 95 % interval of each point that has one."""
    import matplotlib.pyplot as plt

    from analysis.figures import _note, _save, _style

    t = pareto_table(df)
    panels = sorted(set(zip(t.model, t.corpus))) or [("none", "")]
    several = t.corpus.nunique() > 1
    colours = method_colours(t.method)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.6 * len(panels), 4.4), squeeze=False)
    for ax, (model, corpus) in zip(axes[0], panels):
        g = t[(t.model == model) & (t.corpus == corpus)]
        for name, h in g.groupby("method"):
            h = h.sort_values("budget %")
            ax.plot(h["% of selection params removed"], h["ppl increase %"], marker="o", color=colours[name],
                    lw=2.2 if name.startswith("paper") else 1.3, label=name)
            bounds = h[CI_COLUMN].map(_bounds)
            has = bounds.notna()
            if has.any():  # the 95 % interval of each increase that has one (results with per-window NLL)
                lo, hi = zip(*bounds[has])
                y = h["ppl increase %"][has]
                below, above = (y - list(lo)).clip(lower=0), (list(hi) - y).clip(lower=0)  # bounds print rounded
                ax.errorbar(h["% of selection params removed"][has], y, yerr=[below, above], fmt="none",
                            ecolor=colours[name], elinewidth=0.9, capsize=2.5)
        _style(ax, "% of the blocks' linear-layer parameters removed", "perplexity increase (%)",
               f"{model}, {corpus}" if several else model, log=True,
               legend_size=6)
    if t.empty:
        _note(axes[0][0], "no pareto results")
    return _save(fig, out)


def _verdict(diff) -> str:
    return "not resolved" if not diff.resolved else ("worse" if diff.estimate > 0 else "better")


STAGE_COLUMNS = ["model", "budget %", "run", "against", "Δ log ppl vs the run without it", "95 % CI", "verdict"]


def stage_differences(df: pd.DataFrame) -> pd.DataFrame:
    """Each budget run with a setting added to its method (a stage after decompose, ``+refit``/``+anchor``, or MLP
    neuron selection, ``-neurons``) against the run of the same model, budget, method, allocation and calibration
    windows without any: the paired difference in mean ``Δ log ppl`` over the validation windows (positive: the
    addition made the model worse)."""
    import numpy as np

    d = budget_rows(df)
    settings = d.setting.fillna("")
    rows = []
    for r, setting in zip(d.itertuples(), settings):
        base = d[(d.model == r.model) & (d.rank_value == r.rank_value) & (d.rank_unit == r.rank_unit)
                 & (d.method == r.method) & (d.calibration_windows == r.calibration_windows) & (settings == "")]
        if not setting.startswith(("+", "-neurons")) or len(base) != 1 or not isinstance(r.window_deltas, np.ndarray) \
                or not isinstance(base.window_deltas.iloc[0], np.ndarray):
            continue
        diff = difference_interval(r.window_deltas, base.window_deltas.iloc[0])
        if diff is None:
            continue
        rows.append([r.model, r.rank_value, label(r.method, r.rank_unit, setting),
                     label(r.method, r.rank_unit, ""), diff.estimate, fmt(diff), _verdict(diff)])
    t = pd.DataFrame(rows, columns=STAGE_COLUMNS)
    return t.sort_values(["model", "budget %", "run"]).reset_index(drop=True)


REFERENCE = ("kfac", "loss_estimate")  # the first loss-aware curve, run on every model and corpus
REFERENCE_COLUMNS = ["model", "corpus", "budget %", "run", "against", "Δ log ppl vs the reference", "95 % CI",
                     "verdict"]


def reference_label(reference: tuple[str, str]) -> str:
    return label(reference[0], f"budget-{reference[1]}", "")


def with_reference(d: pd.DataFrame, reference: tuple[str, str], same: list[str], value: str):
    """(row, the reference's ``value``) for each row of ``d`` that is not the reference curve's and whose ``same``
    columns match exactly one reference point's; each row gets a ``run`` label."""
    d = d.assign(run=[label(m, u, s) for m, u, s in zip(d.method, d.rank_unit, d.setting)])
    name = reference_label(reference)
    refs: dict[tuple, list] = {}
    for x in d[d.run == name].itertuples():
        refs.setdefault(tuple(getattr(x, c) for c in same), []).append(getattr(x, value))
    for r in d[d.run != name].itertuples():
        ref = refs.get(tuple(getattr(r, c) for c in same), [])
        if len(ref) == 1:
            yield r, ref[0]


def against_reference(df: pd.DataFrame, reference: tuple[str, str] = REFERENCE) -> pd.DataFrame:
    """Each curve's point against the reference curve's point (``reference``: method, allocation, no stage) of the
    same model, validation corpus and budget: the paired difference in mean ``Δ log ppl`` over the validation windows
    (positive: the curve lost more than the reference). Points without per-window NLL, or measured on other windows,
    have no row."""
    import numpy as np

    d = budget_rows(df)
    d = d.assign(corpus=d.get("corpus", pd.Series("", index=d.index)).fillna(""))
    name, rows = reference_label(reference), []
    for r, ref in with_reference(d, reference, ["model", "corpus", "rank_value"], "window_deltas"):
        if not isinstance(r.window_deltas, np.ndarray) or not isinstance(ref, np.ndarray) \
                or ref.shape != r.window_deltas.shape:
            continue
        diff = difference_interval(r.window_deltas, ref)
        if diff is not None:
            rows.append([r.model, r.corpus, r.rank_value, r.run, name, diff.estimate, fmt(diff), _verdict(diff)])
    t = pd.DataFrame(rows, columns=REFERENCE_COLUMNS)
    return t.sort_values(["model", "corpus", "budget %", "Δ log ppl vs the reference"]).reset_index(drop=True)


HUMANEVAL_REFERENCE_COLUMNS = ["model", "preset", "budget %", "run", "against", "Δ pass@1 vs the reference (points)",
                               "95 % CI", "tasks only the run passes", "tasks only the reference passes", "verdict"]


def humaneval_against_reference(df: pd.DataFrame, reference: tuple[str, str] = REFERENCE) -> pd.DataFrame:
    """Each HumanEval budget point against the reference curve's point of the same model, HumanEval preset and
    budget, task by task: the paired difference in pass@1 (points; positive: the run passes more), its interval from
    resampling the tasks together for both runs (``analysis.intervals.difference_interval`` with tasks as the unit),
    and the discordant tasks. Points without per-task counts, or run on other tasks, have no row."""
    import numpy as np

    d = humaneval_rows(df)
    d = d[(d.method != "dense") & d.task_pass.map(lambda t: isinstance(t, dict) and len(t) > 1)]
    name, rows = reference_label(reference), []
    for r, ref in with_reference(d, reference, ["model", "humaneval_preset", "rank_value"], "task_pass"):
        if set(ref) != set(r.task_pass):
            continue
        tasks = sorted(r.task_pass)
        a, b = np.array([r.task_pass[t] for t in tasks]), np.array([ref[t] for t in tasks])
        diff = difference_interval(a, b)
        verdict = "not resolved" if not diff.resolved else ("better" if diff.estimate > 0 else "worse")
        rows.append([r.model, r.humaneval_preset, r.rank_value, r.run, name, diff.estimate, fmt(diff),
                     int(((a > 0) & (b == 0)).sum()), int(((a == 0) & (b > 0)).sum()), verdict])
    t = pd.DataFrame(rows, columns=HUMANEVAL_REFERENCE_COLUMNS)
    return t.sort_values(["model", "preset", "budget %", "Δ pass@1 vs the reference (points)"],
                         ascending=[True, True, True, False]).reset_index(drop=True)

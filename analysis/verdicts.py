"""The diagnosis's verdicts as a table: hypothesis | experiment | effect with its interval | runs | verdict.

Each measured row compares two settings of ``experiment=verdict_draws`` (every point run with three random draws of
the calibration windows, each result with per-window NLL): the effect is the difference of their mean ``Δ log ppl``
(``analysis.intervals.difference_interval``; windows paired when both sides were measured on the same tokens,
draws paired when draw k of one side belongs with draw k of the other). A hypothesis names the direction it
expects; the verdict is

* **supported** -- the interval excludes 0 on the side the hypothesis expects;
* **not supported** -- it excludes 0 on the other side;
* **not resolved** -- it contains 0 (which is not evidence of no effect);
* **untestable here** -- no experiment this machine can run decides it (the row says what would);
* **not run yet** -- its runs are not all in the results folder (``runs`` lists those that are).

``runs`` names each side's result files by the identity their names end with (``A: 142cbe45 ...; B: ...``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.intervals import difference_interval, fmt, increase_percent, mean_interval

EXPERIMENT = "verdict_draws"
COLUMNS = ["hypothesis", "experiment", "side A", "side B", "A: ppl increase % [95 % CI]",
           "B: ppl increase % [95 % CI]", "effect: Δ log ppl A - B [95 % CI]", "runs", "verdict"]


@dataclass(frozen=True)
class Side:
    label: str
    where: dict  # column -> value selecting this side's runs (one per calibration draw)


@dataclass(frozen=True)
class Hypothesis:
    text: str
    a: Side
    b: Side
    expects: int  # +1: A loses more than B (effect > 0); -1: A loses less
    paired_windows: bool = True
    paired_draws: bool = False


QWEN05, QWEN15, SMOL = "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b", "smollm2-135m"


def _side(label, model=QWEN05, **where) -> Side:
    return Side(label, {"model": model, **where})


HYPOTHESES = [
    Hypothesis("LoRD beats plain SVD on MLP-down at 25 % rank reduction (main job)",
               _side("lord, MLP-down 25 %", method="lord", layers="mlp_down", rank_value=25.0),
               _side("svd, MLP-down 25 %", method="svd", layers="mlp_down", rank_value=25.0), expects=-1),
    Hypothesis("LoRD beats plain SVD on MLP-down at 50 % rank reduction (main job)",
               _side("lord, MLP-down 50 %", method="lord", layers="mlp_down", rank_value=50.0),
               _side("svd, MLP-down 50 %", method="svd", layers="mlp_down", rank_value=50.0), expects=-1),
    Hypothesis("Mean compensation hurts MLP-down at 10 % rank reduction (lord_meanfix loses more than lord)",
               _side("lord_meanfix, MLP-down 10 %", method="lord_meanfix", layers="mlp_down", rank_value=10.0),
               _side("lord, MLP-down 10 %", method="lord", layers="mlp_down", rank_value=10.0), expects=+1,
               paired_draws=True),
    Hypothesis("Greedy allocation loses to uniform ranks at a 10 % budget (whiten, every layer)",
               _side("whiten, greedy, 10 % budget", method="whiten", layers="all", rank_unit="budget-greedy",
                     rank_value=10.0),
               _side("whiten, uniform, 10 % budget", method="whiten", layers="all", rank_unit="budget-uniform",
                     rank_value=10.0), expects=+1, paired_draws=True),
    Hypothesis("The 0.5B model loses less than SmolLM2-135M (all grouped, lord_meanfix, 10 %)",
               _side("0.5B, 10 %", method="lord_meanfix", layers="all-grouped", rank_value=10.0, setting=""),
               _side("SmolLM2-135M, 10 %", model=SMOL, method="lord_meanfix", layers="all-grouped", rank_value=10.0),
               expects=-1, paired_windows=False),
    Hypothesis("The 0.5B model loses less than SmolLM2-135M (all grouped, lord_meanfix, 30 %)",
               _side("0.5B, 30 %", method="lord_meanfix", layers="all-grouped", rank_value=30.0, setting=""),
               _side("SmolLM2-135M, 30 %", model=SMOL, method="lord_meanfix", layers="all-grouped", rank_value=30.0),
               expects=-1, paired_windows=False),
    Hypothesis("The 1.5B model loses less than the 0.5B model (all grouped, lord_meanfix, 10 %)",
               _side("1.5B, 10 %", model=QWEN15, method="lord_meanfix", layers="all-grouped", rank_value=10.0),
               _side("0.5B, 10 %", method="lord_meanfix", layers="all-grouped", rank_value=10.0, setting=""),
               expects=-1, paired_windows=False),
    Hypothesis("The 1.5B model loses less than the 0.5B model (all grouped, lord_meanfix, 30 %)",
               _side("1.5B, 30 %", model=QWEN15, method="lord_meanfix", layers="all-grouped", rank_value=30.0),
               _side("0.5B, 30 %", method="lord_meanfix", layers="all-grouped", rank_value=30.0, setting=""),
               expects=-1, paired_windows=False),
]

UNTESTABLE = [
    ("The gated (SwiGLU) MLP is why a small output error costs so much perplexity",
     "needs a pretrained model with a non-gated (GELU) MLP of similar size and training to compare; the offline zoo "
     "and the registries carry none (benchmarks/swiglu only shows the gate amplifies the projections' error ~1.6x "
     "on 2 windows of one model)"),
]


def _select(d: pd.DataFrame, side: Side) -> pd.DataFrame:
    keep = pd.Series(True, index=d.index)
    for k, v in side.where.items():
        keep &= d[k].fillna("") == v if isinstance(v, str) else d[k] == v
    return d[keep].sort_values("calibration_draw", na_position="first")


def _noise_rows(d: pd.DataFrame) -> list[dict]:
    """The 4-bit proxy: per noise seed k (with calibration draw k), the compression's Δ over the noisy dense model
    against the same compression's Δ over the clean model (clean run of draw k)."""
    noisy_a, clean_a, runs = [], [], []
    for k in (1, 2, 3):
        comp = d[(d.model == QWEN05) & (d.setting == f"+quant_noise-seed{k}") & (d.method == "lord_meanfix")]
        dense = d[(d.model == QWEN05) & (d.setting == f"+quant_noise-seed{k}") & (d.method == "dense")]
        clean = d[(d.model == QWEN05) & (d.setting.fillna("") == "") & (d.method == "lord_meanfix")
                  & (d.layers == "all-grouped") & (d.rank_value == 10.0) & (d.calibration_draw == k)]
        if min(len(comp), len(dense), len(clean)) == 0:
            continue
        parts = [comp.window_deltas.iloc[0], dense.window_deltas.iloc[0], clean.window_deltas.iloc[0]]
        if not all(isinstance(x, np.ndarray) for x in parts):
            continue
        noisy_a.append(parts[0] - parts[1])
        clean_a.append(parts[2])
        runs += [comp.path.iloc[0], dense.path.iloc[0], clean.path.iloc[0]]
    if not noisy_a:
        return [_pending(NOISE_TEXT, NOISE_A, NOISE_B, "")]
    effect = difference_interval(noisy_a, clean_a, paired_draws=True)
    return [_row(NOISE_TEXT, NOISE_A, NOISE_B, noisy_a, clean_a, effect, +1, " ".join(_id8(p) for p in runs),
                 "additive noise cannot remove the quantization already in the weights: a proxy")]


NOISE_TEXT = ("Quantization-like noise makes the model more sensitive to decomposition (4-bit proxy: uniform noise of "
              "one GGUF step added again; all grouped, lord_meanfix, 10 %)")
NOISE_A, NOISE_B = "Δ over the noisy dense model", "Δ over the clean dense model"


def _id8(path) -> str:
    """The identity a result file's name ends with (``...-<id8>.json``): the run, findable with ``find -name``."""
    return str(path).rsplit("-", 1)[-1].removesuffix(".json")


def _run_names(a: pd.DataFrame, b: pd.DataFrame) -> str:
    """``A: <id8> <id8> ...; B: <id8> ...``: the result files of each side, in draw order."""
    return "; ".join(f"{side}: {' '.join(_id8(p) for p in x.path)}" for side, x in (("A", a), ("B", b)) if len(x))


def _pending(text, a_label, b_label, runs) -> dict:
    """A hypothesis whose runs are not (all) published yet: listed, with what it waits for."""
    return {"hypothesis": text, "experiment": f"experiment={EXPERIMENT}", "side A": a_label, "side B": b_label,
            "A: ppl increase % [95 % CI]": "", "B: ppl increase % [95 % CI]": "",
            "effect: Δ log ppl A - B [95 % CI]": "", "runs": runs, "verdict": "not run yet"}


def _row(text, a_label, b_label, a, b, effect, expects, runs, note="") -> dict:
    verdict = "not resolved"
    if effect is not None and effect.resolved:
        verdict = "supported" if np.sign(effect.estimate) == expects else "not supported"
    ia, ib = mean_interval(a), mean_interval(b)

    def pct(i):
        return "n/a" if i is None else f"{increase_percent(i).estimate:+.4g} {fmt(increase_percent(i))}"
    return {"hypothesis": text + (f" ({note})" if note else ""), "experiment": f"experiment={EXPERIMENT}",
            "side A": a_label, "side B": b_label, "A: ppl increase % [95 % CI]": pct(ia),
            "B: ppl increase % [95 % CI]": pct(ib),
            "effect: Δ log ppl A - B [95 % CI]": "n/a" if effect is None else f"{effect.estimate:+.4f} {fmt(effect)}",
            "runs": runs, "verdict": verdict if effect is not None else "not measured yet"}


def verdict_table(df: pd.DataFrame) -> pd.DataFrame:
    d = df[(df.experiment == EXPERIMENT) & (df["eval"] == "perplexity")]
    rows = []
    for h in HYPOTHESES:
        a, b = _select(d, h.a), _select(d, h.b)
        a, b = (x[x.window_deltas.map(lambda v: isinstance(v, np.ndarray))] for x in (a, b))
        if not len(a) or not len(b) or (h.paired_draws and len(a) != len(b)):
            rows.append(_pending(h.text, h.a.label, h.b.label, _run_names(a, b)))
            continue
        a_d, b_d = list(a.window_deltas), list(b.window_deltas)
        effect = difference_interval(a_d, b_d, paired_windows=h.paired_windows, paired_draws=h.paired_draws)
        rows.append(_row(h.text, h.a.label, h.b.label, a_d, b_d, effect, h.expects, _run_names(a, b)))
    rows += _noise_rows(d)
    rows += [{"hypothesis": text, "experiment": "none possible here", "side A": "", "side B": "",
              "A: ppl increase % [95 % CI]": "", "B: ppl increase % [95 % CI]": "",
              "effect: Δ log ppl A - B [95 % CI]": what, "runs": "", "verdict": "untestable here"}
             for text, what in UNTESTABLE]
    return pd.DataFrame(rows, columns=COLUMNS)

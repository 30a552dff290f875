"""Every table and figure ``make_all`` can write, registered by name (``ARTEFACTS``).

A preset names the artefacts made from its results under ``hydra.sweeper.artefacts`` (``conf/experiment/*.yaml``);
``make_all`` makes those of every preset with results in the folder, plus ``ALWAYS`` (paper values, the analytic
figures, benchmark figures, HumanEval failure modes, run times); results of an experiment no preset names (an ad-hoc
sweep) get ``FOR_ANY_RESULTS``. Adding a table or figure is one function here (or in any
module of this package) registered with ``@ARTEFACTS.register("<name>")``, and its name in a preset's list::

    @ARTEFACTS.register("my_table")
    def my_table(a: Analysis) -> list[Path]:
        rows = a.everything[a.everything.experiment == "my_preset"]
        return a.table(rows, "my_table", my_table_function, "What it shows")

Each function receives an ``Analysis`` (the frame of every result, the output folder, the benchmarks folder) and
returns the files it wrote; it filters the rows it needs itself, so several presets can feed one artefact (the
``pareto`` artefact reads ``pareto``, ``pareto_corpus`` and ``pareto_large``). Artefacts are made in the order
they are registered, whichever presets asked for them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from analysis import (ablations, analytic, anchor_fit, composition, figures, humaneval_failures, pareto, rank_sweep,
                      refit_diagnosis, sensitivity_grid, tables)
from analysis.results import for_artefact, load_speed_benchmarks, same_models_as, without_lone_variants
from lord.params import zoo_model_configs
from lord.registry import Registry

ARTEFACTS: Registry = Registry("analysis artefact", "analysis")
ALWAYS = ("paper_values", "analytic", "benchmark_figures", "gpu_speed", "humaneval_failures", "run_times",
          "dense_baselines")
# what results of an experiment that no preset names get (an ad-hoc sweep, experiment_name=my_sweep): the tables and
# figures that read any run of the standard settings
FOR_ANY_RESULTS = ("perplexity_table", "table1_humaneval", "speed", "methods", "fig1", "fig2")


def caption(df: pd.DataFrame, what: str) -> str:
    """``what``, then the models (with their GGUF file type), profiles and validation split hashes of ``df``."""
    if df.empty:
        return what
    models = ", ".join(f"{m} ({t})" if isinstance(t, str) else m
                       for m, t in df[["model", "gguf_file_type"]].drop_duplicates().itertuples(index=False))
    profiles = ", ".join(sorted({str(p) for p in df.profile}))
    shas = sorted({s[:12] for s in df.validation_sha256.dropna()})
    data = f"; validation split sha256 {', '.join(shas)}" if shas else ""
    return f"{what}. Models: {models}; profile: {profiles}{data}."


@dataclass
class Analysis:
    """What every artefact reads: all results (``everything``), where files go, the benchmarks folder."""

    everything: pd.DataFrame
    out: Path
    benchmarks: Path | None = None
    problems: list = field(default_factory=list)

    @property
    def standard(self) -> pd.DataFrame:
        """The paper's settings: every block, every window position counted, no extra stage, no budget, the fixed
        calibration windows, a model from the zoo or the hub (runs with skip_first, extra stages, a subset of blocks or
        a budget are in the diagnosis and pareto artefacts; runs on randomly drawn calibration windows in the
        verdicts; a saved checkpoint loaded again -- model source ``lord-compressed`` -- in its own experiment)."""
        e = self.everything
        keep = ((e.setting.fillna("") == "") & (e.blocks.fillna("") == "")
                & ~e.rank_unit.fillna("").str.startswith("budget") & e.calibration_draw.isna()
                & (e.model_source.fillna("") != "lord-compressed"))
        return e[keep]

    def of(self, experiment: str) -> pd.DataFrame:
        return self.everything[self.everything.experiment == experiment]

    def table(self, frame: pd.DataFrame, name: str, make, what: str, figure=None) -> list[Path]:
        """table_<name>.md/.tex of ``make(frame)`` captioned with what ``frame`` holds, and ``figure(frame, out /
        name)`` when given."""
        written = tables.write(make(frame), self.out / f"table_{name}", caption(frame, what))
        return written + (figure(frame, self.out / name) if figure else [])


# the paper's artefacts ----------------------------------------------------------------------------------------
@ARTEFACTS.register("main_summary")
def main_summary(a: Analysis) -> list[Path]:
    """The main job's table and figure (README), as its sweep's report writes them."""
    ppl = a.of("main")
    ppl = ppl[ppl["eval"] == "perplexity"]
    if not len(ppl):
        return []
    written = tables.write(rank_sweep.rank_sweep_table(ppl), a.out / "table_main",
                           caption(ppl, "The main job: perplexity vs % rank reduction of MLP-down, LoRD and plain SVD"))
    profiles = ", ".join(sorted({str(p) for p in ppl.profile}))
    return written + rank_sweep.plot_rank_sweep(ppl, a.out / "main_rank_sweep", title=f"main, profile={profiles}")


@ARTEFACTS.register("perplexity_table")
def perplexity_table(a: Analysis) -> list[Path]:
    df = a.standard
    return tables.write(tables.perplexity_table(df), a.out / "table_perplexity",
                        caption(df[df["eval"] == "perplexity"], "Perplexity increase vs % rank reduction (paper: "
                                "Tables 3-4, all layers, interpolated at our reductions)"))


@ARTEFACTS.register("table1_humaneval")
def table1_humaneval(a: Analysis) -> list[Path]:
    he = for_artefact(a.standard[a.standard["eval"] == "humaneval"], "table1_humaneval")
    presets = ", ".join(sorted({str(p) for p in he.humaneval_preset.dropna()})) or "none"
    return tables.write(tables.humaneval_table(he), a.out / "table1_humaneval",
                        caption(he, f"HumanEval pass@1 vs rank, preset {presets}, 95% bootstrap CI over tasks "
                                    "(paper: Table 1, StarCoder 16B MLP-down, code-eval)"))


@ARTEFACTS.register("speed")
def speed(a: Analysis) -> list[Path]:
    sp = for_artefact(a.standard[a.standard["eval"] == "speed"], "fig3_speed")
    return (tables.write(tables.speed_table(sp), a.out / "table_speed",
                         caption(sp, "Time and size relative to the dense model (paper: Figure 3)"))
            + figures.fig3(sp, a.out / "fig3_speed"))


@ARTEFACTS.register("methods")
def methods(a: Analysis) -> list[Path]:
    df = a.standard
    return (tables.write(tables.method_table(df), a.out / "table_methods",
                         caption(df[df["eval"] == "perplexity"], "Perplexity increase (%) of each method at equal "
                                                                 "parameter count"))
            + figures.methods_figure(df, a.out / "methods"))


@ARTEFACTS.register("paper_values")
def paper_values(a: Analysis) -> list[Path]:
    ours_of = {"table2_quantization": "table_table2_quantization*.md", "a5_lora": "table_a5_lora_*.md"}
    written = []
    for name in ("table2_quantization", "a5_lora", "blog_humaneval"):
        ours = name in ours_of and (a.everything.experiment == name).any()
        written += tables.write(tables.paper(name), a.out / f"paper_{name}", f"Paper values ({name}); " + (
            f"ours: {ours_of[name]}" if ours else "not reproduced here"))
    return written


@ARTEFACTS.register("fig1")
def fig1(a: Analysis) -> list[Path]:
    ppl = a.standard[a.standard["eval"] == "perplexity"]
    return figures.fig1(for_artefact(ppl, "fig1_rank_sweep"), a.out / "fig1_perplexity_vs_rank")


@ARTEFACTS.register("fig2")
def fig2(a: Analysis) -> list[Path]:
    ppl = a.standard[a.standard["eval"] == "perplexity"]
    paper_settings = ppl[~ppl.experiment.str.startswith("ablation_")]  # the diagnosis has its own figures
    return figures.fig2(same_models_as(paper_settings, "fig2_layer_kinds"), a.out / "fig2_layer_kinds")


@ARTEFACTS.register("gpu_speed")
def gpu_speed(a: Analysis) -> list[Path]:
    """Fig. 3 at the paper's scale from ``speed-from-config-*.json`` benchmarks (read only with ``--benchmarks``)."""
    if a.benchmarks is None:
        return []
    gpu, problems = load_speed_benchmarks(a.benchmarks)
    a.problems += problems
    written = []
    for (model, device, dtype), g in gpu.groupby(["model", "device", "dtype"]):
        stem = "fig3_speed_" + re.sub(r"[^A-Za-z0-9.]+", "-", f"{model.split('/')[-1]}_{device}_{dtype}")
        what = f"{model}, random weights, {dtype} on {device}"
        written += tables.write(tables.speed_table(g), a.out / stem.replace("fig3", "table"),
                                f"Time and size relative to the dense model: {what} (paper: Figure 3, StarCoder "
                                f"16B on an A100, speedups up to 22.35%)")
        written += figures.fig3(g, a.out / stem, subtitle=f"\n{what}")
    return written


@ARTEFACTS.register("analytic")
def analytic_figures(a: Analysis) -> list[Path]:
    """Figs. 4 and 7 from the parameter counter alone (no runs)."""
    kinds = pd.concat([analytic.layer_kind_alphas(m) for m in
                       ["bigcode/starcoder", "Salesforce/codegen-16B-mono", *zoo_model_configs()]])
    return (figures.fig4(analytic.eq6_curves(), kinds, a.out / "fig4_parity")
            + figures.fig7(analytic.storage_sizes(), a.out / "fig7_storage"))


# the diagnosis -------------------------------------------------------------------------------------------------
@ARTEFACTS.register("ablation_layers")
def ablation_layers(a: Analysis) -> list[Path]:
    layers = a.of("ablation_layers")
    if not len(layers):
        return []
    return (a.table(layers, "ablation_layers", ablations.layer_kind_table, "Each layer kind alone and all together: "
                    "both size axes, Δ log ppl = ln(ppl / dense ppl)", figures.ablation_layers)
            + a.table(layers, "ablation_additivity", ablations.additivity_table, "Do the kinds' damages add up? All "
                      "layers together vs the sum of each kind alone (log-perplexity scale)"))


@ARTEFACTS.register("ablation_calibration")
def ablation_calibration(a: Analysis) -> list[Path]:
    calibration, layers = a.of("ablation_calibration"), a.of("ablation_layers")
    if not len(calibration):
        return []
    reference = layers[layers.layers.isin(calibration.layers.unique())  # the profile's calibration, for reference
                       & layers.rank_value.isin(calibration.rank_value.unique())]
    return a.table(pd.concat([calibration, reference]), "ablation_calibration", ablations.calibration_table,
                   "Calibration size, window length, corpus and mode (validation unchanged)",
                   figures.ablation_calibration)


@ARTEFACTS.register("ablation_blocks")
def ablation_blocks(a: Analysis) -> list[Path]:
    blocks = a.of("ablation_blocks")
    return a.table(blocks, "ablation_blocks", ablations.block_table, "One block at a time (all its kinds, q/k/v and "
                   "gate/up grouped), against all blocks together (log-perplexity scale)",
                   figures.ablation_blocks) if len(blocks) else []


@ARTEFACTS.register("ablation_outliers")
def ablation_outliers(a: Analysis) -> list[Path]:
    outliers = a.of("ablation_outliers")
    return a.table(outliers, "ablation_outliers", ablations.layer_kind_table, "Statistics without the first "
                   "skip_first positions of each window", figures.ablation_outliers) if len(outliers) else []


@ARTEFACTS.register("ablation_quant_noise")
def ablation_quant_noise(a: Analysis) -> list[Path]:
    noisy, layers = a.of("ablation_quant_noise"), a.of("ablation_layers")
    if not len(noisy):
        return []
    return a.table(noisy, "ablation_quant_noise", lambda n: ablations.quant_noise_table(n, layers),
                   "Decomposition of a model with about its quantization noise added again (uniform ±Δ/2 per weight, "
                   "Δ = its GGUF block's step): Δ log ppl over the noisy dense model vs over the clean one")


@ARTEFACTS.register("ablation_sizes")
def ablation_sizes(a: Analysis) -> list[Path]:
    sizes, layers = a.of("ablation_sizes"), a.of("ablation_layers")
    if not len(sizes):
        return []
    same = layers[layers.layers.isin(sizes.layers.unique()) & layers.method.isin(sizes.method.unique())  # the 0.5B
                  & layers.rank_value.isin(sizes.rank_value.unique())]                                   # model's
    return a.table(pd.concat([sizes, same]), "ablation_sizes", ablations.size_table,
                   "The same compression on each zoo model (size trend; log-perplexity scale)", figures.ablation_sizes)


@ARTEFACTS.register("humaneval_vs_perplexity")
def humaneval_vs_perplexity(a: Analysis) -> list[Path]:
    paired, rho = ablations.humaneval_vs_perplexity(a.everything)
    if not len(paired):
        return []
    note = "; ".join(f"{m}: Spearman ρ(Δ log ppl, pass@1) = {r:.2f} over {n} points" for m, (r, n) in rho.items())
    return (tables.write(paired, a.out / "table_humaneval_vs_perplexity",
                         "Greedy HumanEval pass@1 next to the perplexity increase of the same compression"
                         + (f" ({note})" if note else ""))
            + figures.humaneval_vs_perplexity(paired, rho, a.out / "humaneval_vs_perplexity"))


@ARTEFACTS.register("benchmark_figures")
def benchmark_figures(a: Analysis) -> list[Path]:
    """Figures of the diagnosis benchmarks' JSON files (read only with ``--benchmarks``)."""
    written = []
    for prefix, draw in (("first-position", figures.first_position), ("spectra", figures.spectra),
                         ("swiglu", figures.swiglu)):
        for path in sorted(a.benchmarks.glob(f"{prefix}-*.json")) if a.benchmarks is not None else []:
            written += draw(json.loads(path.read_text()), a.out / path.stem)
    return written


# beyond the paper ----------------------------------------------------------------------------------------------
# experiment=pareto_neurons and pareto_measured write into pareto's folder
PARETO_EXPERIMENTS = ("pareto", "pareto_corpus", "pareto_large")


@ARTEFACTS.register("pareto")
def pareto_artefact(a: Analysis) -> list[Path]:
    e = without_lone_variants(a.everything[a.everything.experiment.isin(PARETO_EXPERIMENTS)])
    if not len(pareto.budget_rows(e)):
        return []
    return (a.table(e, "pareto", pareto.pareto_table, "Quality at equal parameters: perplexity increase vs % of the "
                    "blocks' linear-layer parameters removed (rank.unit=budget), per method and rank allocation; "
                    "compression time and peak memory of the stages (statistics and bases may come from the cache)",
                    pareto.pareto_figure)
            + tables.write(pareto.pareto_summary(e), a.out / "table_pareto_summary",
                           caption(pareto.budget_rows(e), "Perplexity increase (%) at each budget"))
            + tables.write(pareto.against_reference(e), a.out / "table_pareto_vs_reference",
                           caption(pareto.budget_rows(e), "Each curve against kfac + loss_estimate at the same model, "
                                   "corpus and budget: paired difference in mean Δ log ppl over the validation windows "
                                   "(positive: the curve lost more); only points with per-window NLL")))


@ARTEFACTS.register("tuning")
def tuning(a: Analysis) -> list[Path]:
    """The settings of issue 35's methods tried on the stdlib corpus before any curve is run (experiment=tune_sota):
    where the choice of the pareto curves' settings comes from."""
    e = a.of("tune_sota")
    if not len(pareto.budget_rows(e)):
        return []
    written = a.table(e, "tuning", pareto.pareto_table, "Settings tried on the stdlib corpus (experiment=tune_sota, "
                      "the corpus settings are chosen on): perplexity increase at a budget of the blocks' "
                      "linear-layer parameters removed, per method, allocation, stage and option ([key=value]: the "
                      "option in which runs of one point differ)")
    differences = pareto.stage_differences(e)
    if len(differences):
        written += tables.write(differences, a.out / "table_tuning_stages",
                                caption(pareto.budget_rows(e), "The stages after decompose (refit, anchor) and MLP "
                                        "neuron selection in experiment=tune_sota, each against the same run "
                                        "without it: paired difference in mean Δ log ppl over the validation "
                                        "windows (positive: the addition made the model worse)"))
    anchored = e[e.setting.fillna("").str.contains("anchor")]
    if len(anchored):
        written += a.table(anchored, "anchor_fit", anchor_fit.anchor_fit_table,
                           "The anchor stage layer by layer, from each run's record (stages.anchor.targets): layers "
                           "whose objective on the calibration tokens the fit raised (above float rounding), layers "
                           "worse than the decomposition on the held-out batch and their blocks, and the ridge each "
                           "layer chose on that batch (relative to the mean eigenvalue)")
    return written


def _budget_table(a: Analysis, experiment: str, name: str, make, what: str) -> list[Path]:
    """table_<name> of ``make`` over ``experiment``'s runs, or nothing when it has no run at a budget."""
    e = a.of(experiment)
    return a.table(e, name, make, what) if len(pareto.budget_rows(e)) else []


@ARTEFACTS.register("sensitivity_grid")
def sensitivity_grid_artefact(a: Analysis) -> list[Path]:
    """How coarse the measured allocation's options can be (experiment=tune_grid, the stdlib corpus)."""
    what = ("The measured allocation with fewer options per matrix (sensitivity.grid; the KL table's forward "
            "passes grow with the options), each against the default grid (else the one with the most "
            "options) at the same model, method and budget: paired difference in mean Δ log ppl over the "
            "validation windows (positive: the other grid lost more)")
    return _budget_table(a, "tune_grid", "sensitivity_grid", sensitivity_grid.grid_table, what)


@ARTEFACTS.register("refit_diagnosis")
def refit_diagnosis_artefact(a: Analysis) -> list[Path]:
    """Why refit hurts at large budgets (experiment=refit_diagnosis): one candidate cause changed per run."""
    what = ("Why refit hurts at large budgets (experiment=refit_diagnosis): each candidate cause changed "
            "alone -- the first window position left out of the fit (refit.skip_first), the ridge chosen per "
            "layer on held-out calibration batches, four times the calibration windows, the layers of a block "
            "refitted in forward order (refit.order=sublayer) -- against the run "
            "without refit on the same windows (paired over the validation windows; positive: refit is "
            "worse). Medians over the refitted layers from each run's record (stages.refit.targets); the "
            "first position's share of the squared residual before the fit is 1 / 1024 for a typical position")
    return _budget_table(a, "refit_diagnosis", "refit_diagnosis", refit_diagnosis.refit_diagnosis_table, what)


@ARTEFACTS.register("pareto_humaneval")
def pareto_humaneval(a: Analysis) -> list[Path]:
    e = a.everything
    if not len(pareto.humaneval_rows(e)):
        return []
    curves = without_lone_variants(e[e.experiment.isin(PARETO_EXPERIMENTS)])  # the pareto table's points
    return (tables.write(pareto.pareto_humaneval_table(e, curves), a.out / "table_pareto_humaneval",
                         caption(pareto.humaneval_rows(e), "HumanEval pass@1 at equal parameters "
                                 "(experiment=pareto_humaneval), 95% bootstrap CI over tasks; change from the dense "
                                 "run of the same experiment; ppl increase %: the same point's perplexity run in the "
                                 "pareto table"))
            + tables.write(pareto.humaneval_against_reference(e), a.out / "table_pareto_humaneval_vs_reference",
                           caption(pareto.humaneval_rows(e), "Each HumanEval point against kfac + loss_estimate at the "
                                   "same model, preset and budget, task by task: paired difference in pass@1 (points; "
                                   "positive: the run passes more), 95 % bootstrap CI over the tasks resampled "
                                   "together; only runs with per-task counts on the same tasks")))


@ARTEFACTS.register("table2_quantization")
def table2_quantization(a: Analysis) -> list[Path]:
    written = []
    for ev, g in a.of("table2_quantization").groupby("eval"):
        written += a.table(g, f"table2_quantization{'' if ev == 'humaneval' else '_' + ev}",
                           composition.quantization_table,
                           f"LoRD + HQQ weight-only quantization ({ev}): float, 8-bit and 4-bit (groups of 64) of the "
                           "dense model and of LoRD models (lord_meanfix: LoRD with mean compensation, this repo's "
                           "variant); bytes of every tensor (memory) and of the saved state dict "
                           "(disk). Paper: Table 2 (SpQR, StarCoder 16B), paper_table2_quantization.md")
    return written


@ARTEFACTS.register("fig6_pruning")
def fig6_pruning(a: Analysis) -> list[Path]:
    written = []
    for ev, g in a.of("fig6_pruning").groupby("eval"):
        written += a.table(g, f"fig6_pruning{'' if ev == 'humaneval' else '_' + ev}", composition.pruning_table,
                           f"Wanda pruning (50 % unstructured, 2:4) of the dense model and of a LoRD model ({ev}; "
                           "lord_meanfix: LoRD with mean compensation, this repo's variant); "
                           "paper: Fig. 6 (an image; its stated conclusion only)", composition.pruning_figure)
    return written


@ARTEFACTS.register("a5_lora")
def a5_lora(a: Analysis) -> list[Path]:
    written = []
    for ev, g in a.of("a5_lora").groupby("eval"):
        written += a.table(g, f"a5_lora_{ev}", composition.lora_table,
                           f"LoRA (peft, merged into the weights) after LoRD ({ev}): instruction tuning (A.5) and "
                           "healing on the calibration corpus; gap closed = (before - after) / (before - dense); the "
                           "control: the dense model after the same training. tokens/s and peak memory are as each "
                           "run recorded them: comparable only between runs made alike (one process each, nothing "
                           "else running; docs: findings/a5-lora). Paper: A.5, paper_a5_lora.md")
    return written


@ARTEFACTS.register("humaneval_failures")
def humaneval_failures_table(a: Analysis) -> list[Path]:
    failures = humaneval_failures.failures_table(a.everything)
    if not len(failures):
        return []
    return tables.write(failures, a.out / "table_humaneval_failures",
                        "How HumanEval completions fail, per run with its samples on disk: each sample's outcome "
                        "(wrong answer = an assertion failed; empty body = only pass/...; other = killed by a resource "
                        "limit or an uncomparable return value); unstopped: the preset's stop rule never fired (token "
                        "cap or end of text); looping: unstopped and >= "
                        f"{humaneval_failures.LOOP_SHARE:.0%} of its lines repeat an earlier one; ended by "
                        "end-of-text: recorded since samples say why generation ended (empty for older runs); median "
                        "chars: of the completions")


@ARTEFACTS.register("verdicts")
def verdicts(a: Analysis) -> list[Path]:
    """The diagnosis's verdicts with intervals (experiment=verdict_draws; analysis/verdicts.py)."""
    from analysis.verdicts import verdict_table

    rows = a.of("verdict_draws")
    if not len(rows):
        return []
    return tables.write(verdict_table(a.everything), a.out / "table_verdicts",
                        caption(rows, "The diagnosis's verdicts: each hypothesis against three calibration draws per "
                                      "setting, 95 % intervals over validation windows and draws (expanded percentile "
                                      "bootstrap); supported / not supported when the interval excludes 0, else not "
                                      "resolved"))


@ARTEFACTS.register("run_times")
def run_times(a: Analysis) -> list[Path]:
    """How long each preset's runs took and where (docs: reproduce)."""
    return tables.write(tables.run_times_table(a.everything), a.out / "table_run_times",
                        "Time of the runs as they recorded it (sum of each result's timings: load, dense baseline, "
                        "stages, evaluation), per experiment, model, evaluation and device. Runs that shared the "
                        "machine with other jobs took longer than they would alone")


@ARTEFACTS.register("dense_baselines")
def dense_baselines(a: Analysis) -> list[Path]:
    """The dense perplexity of each model as the sessions' machines measured it (docs: reproduce)."""
    return tables.write(tables.dense_baselines_table(a.everything), a.out / "table_dense_baselines",
                        "Dense perplexity as each run measured its own baseline, per model and validation text, with "
                        "how many results hold each value: the same weights on the same windows, measured on the "
                        "CPUs of different sessions (runs whose setting changes the dense model are left out)",
                        numparse=False)

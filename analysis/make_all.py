"""Regenerate every table and figure from the result files, with the paper's numbers side by side.

    python -m analysis.make_all                       # results/ -> results/analysis/
    python -m analysis.make_all --results R --out O [--benchmarks results/benchmarks]

It reads only the folders it is given (a ``published/`` folder inside ``--results`` is another results folder,
and is not read) and no cache. Malformed, truncated or failed result files are listed (file and reason) and
skipped.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import pandas as pd

from analysis import ablations, analytic, composition, figures, humaneval_failures, pareto, tables
from analysis.results import for_artefact, load_results, load_speed_benchmarks, same_models_as
from lord.params import zoo_model_configs


def _caption(df: pd.DataFrame, what: str) -> str:
    if df.empty:
        return what
    models = ", ".join(f"{m} ({t})" if isinstance(t, str) else m
                       for m, t in df[["model", "gguf_file_type"]].drop_duplicates().itertuples(index=False))
    profiles = ", ".join(sorted({str(p) for p in df.profile}))
    shas = sorted({s[:12] for s in df.validation_sha256.dropna()})
    data = f"; validation split sha256 {', '.join(shas)}" if shas else ""
    return f"{what}. Models: {models}; profile: {profiles}{data}."


def _artefact(frame: pd.DataFrame, out: Path, name: str, table, caption: str, figure=None) -> list[Path]:
    """table_<name>.md/.tex of ``table(frame)`` (captioned with what ``frame`` holds) and, if given, the
    figure ``figure(frame, out / name)``."""
    written = tables.write(table(frame), out / f"table_{name}", _caption(frame, caption))
    return written + (figure(frame, out / name) if figure else [])


def _diagnosis(df: pd.DataFrame, out: Path, benchmarks: Path | None) -> list[Path]:
    """The diagnosis ablations' tables and figures (analysis.ablations), for the presets that have results."""
    written: list[Path] = []
    of = {name: df[df.experiment == f"ablation_{name}"] for name in
          ("layers", "calibration", "blocks", "outliers", "quant_noise", "humaneval_ppl", "sizes")}
    layers = of["layers"]
    if len(layers):
        written += _artefact(layers, out, "ablation_layers", ablations.layer_kind_table,
                             "Each layer kind alone and all together: both size axes, Δ log ppl = ln(ppl / dense ppl)",
                             figures.ablation_layers)
        written += _artefact(layers, out, "ablation_additivity", ablations.additivity_table,
                             "Do the kinds' damages add up? All layers together vs the sum of each kind alone "
                             "(log-perplexity scale)")
    calibration = of["calibration"]
    if len(calibration):  # with ablation_layers' points at the profile's calibration, for reference
        reference = layers[layers.layers.isin(calibration.layers.unique())
                           & layers.rank_value.isin(calibration.rank_value.unique())]
        written += _artefact(pd.concat([calibration, reference]), out, "ablation_calibration",
                             ablations.calibration_table, "Calibration size, window length, corpus and mode "
                             "(validation unchanged)", figures.ablation_calibration)
    if len(of["blocks"]):
        written += _artefact(of["blocks"], out, "ablation_blocks", ablations.block_table,
                             "One block at a time (all its kinds, q/k/v and gate/up grouped), against all blocks "
                             "together (log-perplexity scale)", figures.ablation_blocks)
    if len(of["outliers"]):
        written += _artefact(of["outliers"], out, "ablation_outliers", ablations.layer_kind_table,
                             "Statistics without the first skip_first positions of each window",
                             figures.ablation_outliers)
    if len(of["quant_noise"]):
        written += _artefact(of["quant_noise"], out, "ablation_quant_noise",
                             lambda noisy: ablations.quant_noise_table(noisy, layers),
                             "Decomposition of a model with about its quantization noise added again (uniform "
                             "±Δ/2 per weight, Δ = its GGUF block's step): Δ log ppl over the noisy dense model vs "
                             "over the clean one")
    if len(of["sizes"]):  # with the 0.5B model's same points from ablation_layers
        sizes = of["sizes"]
        same = layers[layers.layers.isin(sizes.layers.unique()) & layers.method.isin(sizes.method.unique())
                      & layers.rank_value.isin(sizes.rank_value.unique())]
        written += _artefact(pd.concat([sizes, same]), out, "ablation_sizes", ablations.size_table,
                             "The same compression on each zoo model (size trend; log-perplexity scale)",
                             figures.ablation_sizes)
    if len(of["humaneval_ppl"]):
        paired, rho = ablations.humaneval_vs_perplexity(df)
        note = "; ".join(f"{m}: Spearman ρ(Δ log ppl, pass@1) = {r:.2f} over {n} points" for m, (r, n) in rho.items())
        written += tables.write(paired, out / "table_humaneval_vs_perplexity",
                                "Greedy HumanEval pass@1 next to the perplexity increase of the same compression"
                                + (f" ({note})" if note else ""))
        written += figures.humaneval_vs_perplexity(paired, rho, out / "humaneval_vs_perplexity")
    for prefix, draw in (("first-position", figures.first_position), ("spectra", figures.spectra),
                         ("swiglu", figures.swiglu)):
        for path in sorted(benchmarks.glob(f"{prefix}-*.json")) if benchmarks is not None else []:
            written += draw(json.loads(path.read_text()), out / path.stem)
    return written


def _composition(df: pd.DataFrame, out: Path) -> list[Path]:
    """LoRD with quantization (Table 2) and pruning (Fig. 6) on top, and LoRA after it (A.5, healing), for the
    presets that have results."""
    written: list[Path] = []
    quant = df[df.experiment == "table2_quantization"]
    for ev, g in quant.groupby("eval"):
        written += _artefact(g, out, f"table2_quantization{'' if ev == 'humaneval' else '_' + ev}",
                             composition.quantization_table,
                             f"LoRD + HQQ weight-only quantization ({ev}): float, 8-bit and 4-bit (groups of 64) "
                             "of the dense model and of LoRD models; bytes of every tensor (memory) and of the "
                             "saved state dict (disk). Paper: Table 2 (SpQR, StarCoder 16B), paper_table2_quantization.md")
    prune = df[df.experiment == "fig6_pruning"]
    for ev, g in prune.groupby("eval"):
        written += _artefact(g, out, f"fig6_pruning{'' if ev == 'humaneval' else '_' + ev}",
                             composition.pruning_table,
                             f"Wanda pruning (50 % unstructured, 2:4) of the dense model and of a LoRD model ({ev}); "
                             "paper: Fig. 6 (an image; its stated conclusion only)", composition.pruning_figure)
    lora = df[df.experiment == "a5_lora"]
    for ev, g in lora.groupby("eval"):
        written += _artefact(g, out, f"a5_lora_{ev}", composition.lora_table,
                             f"LoRA (peft, merged into the weights) after LoRD ({ev}): instruction tuning (A.5) and "
                             "healing on the calibration corpus; gap closed = (before - after) / (before - dense); the "
                             "control: the dense model after the same training. tokens/s and peak memory are as "
                             "each run recorded them: comparable only between runs made alike (one process each, "
                             "nothing else running; README, LoRA after LoRD). "
                             "Paper: A.5, paper_a5_lora.md")
    return written


def make_all(results: Path, out: Path, benchmarks: Path | None = None) -> dict:
    everything, problems = load_results(results)
    # the paper's tables and figures: every block, every window position counted, no extra stage; runs with
    # skip_first, extra stages or a subset of blocks are in the diagnosis tables (_diagnosis) and counted in index.md
    standard = ((everything.setting.fillna("") == "") & (everything.blocks.fillna("") == "")
                & ~everything.rank_unit.fillna("").str.startswith("budget"))  # budgets: the pareto artefacts
    df = everything[standard]
    gpu, gpu_problems = load_speed_benchmarks(benchmarks) if benchmarks is not None else (None, [])
    problems = problems + gpu_problems
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    ppl = df[df["eval"] == "perplexity"]
    he = for_artefact(df[df["eval"] == "humaneval"], "table1_humaneval")
    sp = for_artefact(df[df["eval"] == "speed"], "fig3_speed")
    presets = ", ".join(sorted({str(p) for p in he.humaneval_preset.dropna()})) or "none"
    written += tables.write(tables.perplexity_table(df), out / "table_perplexity",
                            _caption(ppl, "Perplexity increase vs % rank reduction (paper: Tables 3-4, all layers, "
                                          "interpolated at our reductions)"))
    written += tables.write(tables.humaneval_table(he), out / "table1_humaneval",
                            _caption(he, f"HumanEval pass@1 vs rank, preset {presets}, 95% bootstrap CI over tasks "
                                         "(paper: Table 1, StarCoder 16B MLP-down, code-eval)"))
    written += tables.write(tables.speed_table(sp), out / "table_speed",
                            _caption(sp, "Time and size relative to the dense model (paper: Figure 3)"))
    written += tables.write(tables.method_table(df), out / "table_methods",
                            _caption(ppl, "Perplexity increase (%) of each method at equal parameter count"))
    ours_of = {"table2_quantization": "table_table2_quantization*.md", "a5_lora": "table_a5_lora_*.md"}
    for name in ("table2_quantization", "a5_lora", "blog_humaneval"):
        ours = name in ours_of and (everything.experiment == name).any()
        written += tables.write(tables.paper(name), out / f"paper_{name}", f"Paper values ({name}); " + (
            f"ours: {ours_of[name]}" if ours else "not reproduced here"))
    written += figures.fig1(for_artefact(ppl, "fig1_rank_sweep"), out / "fig1_perplexity_vs_rank")
    paper_settings = ppl[~ppl.experiment.str.startswith("ablation_")]  # the diagnosis has its own figures
    written += figures.fig2(same_models_as(paper_settings, "fig2_layer_kinds"), out / "fig2_layer_kinds")
    written += figures.fig3(sp, out / "fig3_speed")
    for (model, device, dtype), g in ([] if gpu is None else gpu.groupby(["model", "device", "dtype"])):
        stem = "fig3_speed_" + re.sub(r"[^A-Za-z0-9.]+", "-", f"{model.split('/')[-1]}_{device}_{dtype}")
        what = f"{model}, random weights, {dtype} on {device}"
        written += tables.write(tables.speed_table(g), out / stem.replace("fig3", "table"),
                                f"Time and size relative to the dense model: {what} (paper: Figure 3, StarCoder "
                                f"16B on an A100, speedups up to 22.35%)")
        written += figures.fig3(g, out / stem, subtitle=f"\n{what}")
    kinds = pd.concat([analytic.layer_kind_alphas(m) for m in
                       ["bigcode/starcoder", "Salesforce/codegen-16B-mono", *zoo_model_configs()]])
    written += figures.fig4(analytic.eq6_curves(), kinds, out / "fig4_parity")
    written += figures.fig7(analytic.storage_sizes(), out / "fig7_storage")
    written += figures.methods_figure(df, out / "methods")
    written += _diagnosis(everything, out, benchmarks)
    if len(pareto.budget_rows(everything)):
        written += _artefact(everything, out, "pareto", pareto.pareto_table,
                             "Quality at equal parameters: perplexity increase vs % of the blocks' linear-layer "
                             "parameters removed (rank.unit=budget), per method and rank allocation; compression "
                             "time and peak memory of the stages (statistics and bases may come from the cache)",
                             pareto.pareto_figure)
        written += tables.write(pareto.pareto_summary(everything), out / "table_pareto_summary",
                                _caption(pareto.budget_rows(everything), "Perplexity increase (%) at each budget"))
    if len(pareto.humaneval_rows(everything)):
        written += tables.write(pareto.pareto_humaneval_table(everything), out / "table_pareto_humaneval",
                                _caption(pareto.humaneval_rows(everything),
                                         "HumanEval pass@1 at equal parameters (experiment=pareto_humaneval), 95% "
                                         "bootstrap CI over tasks; change from the dense run of the same experiment; "
                                         "ppl increase %: the same point's perplexity run in the pareto table"))
    written += _composition(everything, out)
    failures = humaneval_failures.failures_table(everything)
    if len(failures):
        written += tables.write(failures, out / "table_humaneval_failures",
                                "How HumanEval completions fail, per run with its samples on disk: each sample's "
                                "outcome (wrong answer = an assertion failed; empty body = only pass/...; other = "
                                "killed by a resource limit or an uncomparable return value); unstopped: the "
                                "preset's stop rule never fired (token cap or end of text); looping: unstopped "
                                f"and >= {humaneval_failures.LOOP_SHARE:.0%} of its lines repeat an earlier one; "
                                "ended by end-of-text: recorded since samples say why generation ended (empty "
                                "for older runs); median chars: of the completions")
    index = ["# Regenerated tables and figures", "", f"{len(everything)} results from `{results}`.", ""]
    index += [f"- [{p.name}]({p.name})" for p in written]
    if (~standard).any():
        index += ["", f"{int((~standard).sum())} runs with statistics without the first positions, extra stages, "
                      "a subset of blocks or a parameter budget are in the diagnosis and pareto tables only."]
    variants = everything.attrs.get("variants", [])
    if variants:  # runs of one point with different configs: each kept as its own row/line, never averaged
        index += ["", "## Points run with different configurations", ""]
        index += [f"- {v['point']}: differ in {', '.join(v['keys'])} ({len(v['paths'])} runs)" for v in variants]
    for v in variants:
        print(f"note: {len(v['paths'])} runs of {v['point']} differ in {', '.join(v['keys'])}", file=sys.stderr)
    if problems:
        index += ["", "## Skipped result files", ""] + [f"- `{p['path']}`: {p['reason']}" for p in problems]
    (out / "index.md").write_text("\n".join(index) + "\n")
    for p in problems:
        print(f"skipped {p['path']}: {p['reason']}", file=sys.stderr)
    print(f"{len(everything)} results -> {len(written)} files in {out} (see {out / 'index.md'})")
    return {"frame": everything, "problems": problems, "written": written}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=Path("results"))
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--benchmarks", type=Path, default=None,
                    help="folder of speed-from-config-*.json files (Figure 3 at the paper's scale), e.g. "
                         "results/benchmarks; none is read unless given")
    args = ap.parse_args(argv)
    if not args.results.is_dir():
        print(f"error: results folder {args.results} does not exist; run experiments first", file=sys.stderr)
        return 2
    make_all(args.results, args.out or args.results / "analysis", args.benchmarks)
    return 0


if __name__ == "__main__":
    sys.exit(main())

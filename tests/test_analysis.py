"""Analysis: a results fixture made by real tiny jobs, every table and figure regenerated from it."""

import json
import math
import os
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from analysis import analytic, tables
from analysis.make_all import make_all
from analysis.results import for_artefact, load_results, same_models_as
from hydra_plugins.lord_sweeper.lord_sweeper import merge, preset_points
from experiments.run import run

CONF = Path(__file__).resolve().parents[1] / "conf"
BASE = ["model=smollm2-135m", "profile=quick", "rank.force=true", "experiment_name=fixture"]
RUNS = [
    ["method=dense"],
    ["layers=all", "rank.value=20"],
    ["layers=all", "rank.value=50"],
    ["method=lord", "rank.value=40"],
    ["method=svd", "rank.value=40"],
    ["method=whiten", "rank.value=40"],
    ["method=lord_meanfix", "rank.value=40"],
    ["eval=humaneval_greedy", "method=dense", "eval.limit=2", "eval.max_new_tokens=16"],
    ["eval=humaneval_greedy", "rank.value=50", "eval.limit=2", "eval.max_new_tokens=16"],
    ["eval=speed", "method=svd", "rank.value=50"],
]


@pytest.fixture(scope="module")
def fixture_results(tmp_path_factory, smollm2):
    root = tmp_path_factory.mktemp("results")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for ov in RUNS:
            r = run(compose("config", overrides=[*BASE, *ov, f"paths.results_dir={root}"]))
            assert r["status"] == "ok", r.get("error")
    return root


@pytest.mark.slow
def test_every_table_and_figure_is_regenerated_with_the_results_numbers(fixture_results, tmp_path):
    out = make_all(fixture_results, tmp_path / "analysis")
    df = out["frame"]
    assert len(df) == len(RUNS) and not out["problems"]
    names = {p.name for p in out["written"]}
    for stem in ("fig1_perplexity_vs_rank", "fig2_layer_kinds", "fig3_speed", "fig4_parity", "fig7_storage",
                 "methods"):
        assert {f"{stem}.png", f"{stem}.pdf"} <= names
        assert (tmp_path / "analysis" / f"{stem}.png").stat().st_size > 10_000
    for stem in ("table_perplexity", "table1_humaneval", "table_speed", "table_methods"):
        assert {f"{stem}.md", f"{stem}.tex"} <= names
    md = (tmp_path / "analysis" / "table_perplexity.md").read_text()
    he_md = (tmp_path / "analysis" / "table1_humaneval.md").read_text()
    for f in fixture_results.rglob("*.json"):
        r = json.loads(f.read_text())
        if r["eval"] == "perplexity" and r["config"]["method"]["name"] != "dense":
            assert f"{r['metrics']['perplexity']:.4g}" in md
            assert f"{r['metrics']['perplexity_increase_percent']:.4g}" in md
        if r["eval"] == "humaneval":
            assert f"{r['metrics']['pass@1']['mean']:.4g}" in he_md
    assert "smollm2-135m (MOSTLY_Q4_1)" in md and "profile: quick" in md  # the caption says what was run
    t = tables.perplexity_table(df)  # the paper's all-layer rows sit next to our all-layer runs only
    paper = t["paper StarCoder-16B (%)"]
    assert paper[t.layers == "all"].notna().all() and paper[t.layers != "all"].isna().all()
    assert paper[(t.layers == "all") & (t["% rank reduction"] == 50)].iloc[0] == pytest.approx(
        100 * (2.698 / 1.86 - 1), rel=1e-9)  # Table 3: StarCoder-16B 50 % (rank 3072) vs full rank
    assert "\\caption{" in (tmp_path / "analysis" / "table_perplexity.tex").read_text()


def test_fig4_points_by_hand():
    curves = analytic.eq6_curves(alphas=(0.25, 1.0), reductions=[10.0, 50.0])
    got = {(r.alpha, r.percent_rank_reduction): r.percent_param_change for r in curves.itertuples()}
    # alpha = 0.25, 10 % reduction: r = 0.9 d_min, r (d_max + d_min) / (d_max d_min) = 0.9 * 1.25 -> +12.5 %
    assert got[(0.25, 10.0)] == pytest.approx(12.5)
    # a square matrix at 50 % reduction is exactly at parity
    assert got[(1.0, 50.0)] == pytest.approx(0.0)
    kinds = analytic.layer_kind_alphas("bigcode/starcoder").set_index("kind")
    assert kinds.loc["mlp_down", "alpha"] == pytest.approx(6144 / 24576)  # 0.25, paper 3.1
    assert kinds.loc["attn_qkv", "alpha"] == pytest.approx(6144 / 6400)  # 0.96 (multi-query), paper 3.1


def test_fig7_points_by_hand():
    sizes = analytic.storage_sizes(ranks=(3072, 2304)).set_index(["rank", "format"]).size_gb
    dense = 15_517_456_384  # StarCoder 16B from its config
    for rank in (3072, 2304):
        n = dense - 40 * (24576 * 6144 - rank * (24576 + 6144))  # 40 MLP-down matrices decomposed
        assert sizes[(rank, "LoRD (dense)")] == pytest.approx(n * 4 / 8 / 1e9)
        assert sizes[(rank, "CSR (64-bit indices)")] == pytest.approx(n * 68 / 8 / 1e9)
        assert sizes[(rank, "bitmask (1 bit per dense weight)")] == pytest.approx((4 * n + dense) / 8 / 1e9)
    # the paper's A.7 claim: SpQR's format costs ~24.6 GB more than LoRD at the 12.3B model
    assert sizes[(2304, "SpQR (16-bit indices)")] - sizes[(2304, "LoRD (dense)")] == pytest.approx(24.6, abs=0.05)


@pytest.mark.slow
def test_malformed_results_are_reported_and_skipped(fixture_results, tmp_path):
    import shutil

    root = tmp_path / "r"
    shutil.copytree(fixture_results, root)
    good = next(root.rglob("*.json"))
    (root / "truncated.json").write_text(good.read_text()[:200])
    (root / "list.json").write_text("[1, 2]")
    broken = json.loads(good.read_text())
    del broken["params"]
    (root / "missing.json").write_text(json.dumps(broken))
    df, problems = load_results(root)
    assert len(df) == len(RUNS)
    reasons = {Path(p["path"]).name: p["reason"] for p in problems}
    assert reasons["truncated.json"].startswith("unreadable JSON")
    assert "not a lord result" in reasons["list.json"]
    assert "missing field" in reasons["missing.json"]
    out = make_all(root, tmp_path / "analysis")
    assert "truncated.json" in (tmp_path / "analysis" / "index.md").read_text() and out["written"]


@pytest.mark.slow
def test_the_notebook_runs_on_the_fixture(fixture_results, tmp_path):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(Path(__file__).resolve().parents[1] / "notebooks" / "ablation_methods_and_layers.ipynb",
                       as_version=4)
    os.environ["LORD_RESULTS"], os.environ["LORD_NOTEBOOK_OUT"] = str(fixture_results), str(tmp_path)
    try:
        NotebookClient(nb, timeout=300, kernel_name="python3",
                       resources={"metadata": {"path": str(Path(__file__).resolve().parents[1])}}).execute()
    finally:
        del os.environ["LORD_RESULTS"], os.environ["LORD_NOTEBOOK_OUT"]
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert f"{len(RUNS)} results from" in text
    assert (tmp_path / "ablation_methods_layers.png").stat().st_size > 10_000


def test_each_artefact_prefers_its_own_presets_rows():
    df = pd.DataFrame({"experiment": ["main", "fig2_layer_kinds", "fig2_layer_kinds"], "x": [1, 2, 3]})
    assert list(for_artefact(df, "fig2_layer_kinds").x) == [2, 3]
    assert list(for_artefact(df, "fig1_rank_sweep").x) == [1, 2, 3]  # no rows of that preset: all rows
    setting = dict(eval="perplexity", method="lord", calibration="oneshot", rank_unit="reduction", rank_value=50)
    runs = pd.DataFrame([dict(setting, experiment="fig1_rank_sweep", model="a", layers="all", x=1),
                         dict(setting, experiment="main", model="a", layers="mlp_down", x=2),
                         dict(setting, experiment="fig2_layer_kinds", model="a", layers="mlp_down", x=3),
                         dict(setting, experiment="fig1_rank_sweep", model="b", layers="all", x=4)])
    assert sorted(same_models_as(runs, "fig2_layer_kinds").x) == [1, 3]  # model a only; its own mlp_down row
    assert preset_points({"rank.value": [10, 20]}, [["method=dense"]], None) == [
        ["method=dense"], ["rank.value=10"], ["rank.value=20"]]
    assert preset_points(None, None, [["method=lord"]]) == [["method=lord"]]
    assert preset_points(None, None, None) == [[]]
    # the command line wins over a preset point's value of the same key
    assert (merge(["model=a", "method=lord"], ["+experiment=x", "model=b"])
            == ["+experiment=x", "model=b", "method=lord"])


@pytest.mark.slow  # needs fixture_results (10 runs of SmolLM2-135M)
def test_two_configurations_of_one_point_are_kept_apart_and_named(fixture_results, tmp_path):
    """A point run twice with another setting (here the calibration window count) is never averaged or
    overwritten: both rows stay, each with a variant naming the differing key, and the index lists it."""
    import shutil

    root = tmp_path / "r"
    shutil.copytree(fixture_results, root)
    src = next(f for f in root.rglob("*.json")
               if json.loads(f.read_text())["config"]["method"]["name"] == "lord"
               and json.loads(f.read_text()).get("eval") == "perplexity")
    other = json.loads(src.read_text())
    other["config"]["calibration"]["n_windows"] = 8
    other["metrics"]["perplexity"] *= 0.9
    (src.parent / "other-config.json").write_text(json.dumps(other))
    df, _ = load_results(root)
    rows = df[(df.method == "lord") & (df.rank_value == other["config"]["rank"]["value"])
              & (df.layers == other["config"]["layers"]["name"])]
    assert sorted(rows.variant) == ["calibration.n_windows=4", "calibration.n_windows=8"]
    assert df.attrs["variants"][0]["keys"] == ["calibration.n_windows"]
    out = make_all(root, tmp_path / "analysis")
    table = (tmp_path / "analysis" / "table_perplexity.md").read_text()
    assert f"{other['metrics']['perplexity']:.4g}" in table and "calibration.n_windows=8" in table
    assert "differ in calibration.n_windows" in (tmp_path / "analysis" / "index.md").read_text()
    assert len(out["frame"]) == len(RUNS) + 1


def test_ablation_tables_add_kinds_on_the_log_scale_and_draw_both_axes(tmp_path):
    """By hand: kinds with ppl ratios 1.1, 1.2, 1.05, 1.3 alone sum to ln(1.1·1.2·1.05·1.3) on the log scale;
    an all-layer run at exactly that ratio gives together/sum = 1; a missing kind leaves the sum empty."""
    import math

    from analysis import ablations, figures

    ratios = {"attn_qkv-grouped": 1.1, "attn_out": 1.2, "mlp_gate_up-grouped": 1.05, "mlp_down": 1.3}
    ratios["all-grouped"] = math.prod(ratios.values())
    ratios["all"] = 2.0  # its ungrouped kinds were not all run
    rows = [dict(eval="perplexity", model="m", method="whiten", layers=k, rank_value=10.0, perplexity=5 * r,
                 dense_perplexity=5.0, perplexity_increase_percent=100 * (r - 1), skip_first=0,
                 target_params_removed_percent=-20.0, params_reduction_percent=-3.0) for k, r in ratios.items()]
    df = pd.DataFrame(rows).assign(experiment="ablation_layers")
    add = ablations.additivity_table(df).set_index("layers")
    assert add.loc["all-grouped", "Σ Δ log ppl (each kind alone)"] == pytest.approx(math.log(ratios["all-grouped"]))
    assert add.loc["all-grouped", "together / sum"] == pytest.approx(1.0)
    assert add.loc["all-grouped", "largest share"].startswith("mlp_down")
    assert pd.isna(add.loc["all", "Σ Δ log ppl (each kind alone)"])
    t = ablations.layer_kind_table(df)
    assert {"% rank reduction", "% of these layers' params removed", "Δ log ppl"} <= set(t.columns)
    assert "skip_first" not in t.columns  # only shown when some run left positions out
    paths = figures.ablation_layers(df, tmp_path / "ablation_layers")
    assert all(p.stat().st_size > 10_000 for p in paths)


def test_block_table_sets_blocks_alone_against_all_blocks_together(tmp_path):
    """By hand: three blocks at ppl ratios 1.1, 1.2, 1.5 alone sum to ln(1.98) on the log scale and their shares
    to 100 %; the run without indices (blocks "") is the all-together row, at ln(2.2)/ln(1.98) of the sum; a
    skip_first run is left out."""
    import math

    from analysis import ablations, figures

    base = dict(eval="perplexity", model="m", method="whiten", layers="all-grouped", rank_value=30.0,
                dense_perplexity=5.0, skip_first=0, params_reduction_percent=-1.0)
    ratios = {"blocks0": 1.1, "blocks1": 1.2, "blocks2": 1.5, "": 2.2}
    rows = [dict(base, blocks=b, perplexity=5 * r) for b, r in ratios.items()]
    rows.append(dict(base, blocks="blocks0", perplexity=50.0, skip_first=1))  # another statistic: not a block row
    rows.append(dict(base, blocks="blocks0-1", perplexity=5 * 1.4))  # a set of blocks together
    t = ablations.block_table(pd.DataFrame(rows)).set_index("block")
    total = math.log(1.1 * 1.2 * 1.5)
    assert list(t.index) == ["0", "1", "2", "Σ of 3 blocks alone", "blocks0-1 together", "all together"]
    assert t.loc["blocks0-1 together", "Δ log ppl"] == pytest.approx(math.log(1.4))
    assert t.loc["Σ of 3 blocks alone", "Δ log ppl"] == pytest.approx(total)
    assert t.loc[["0", "1", "2"], "share of Σ (%)"].sum() == pytest.approx(100)
    assert t.loc["2", "share of Σ (%)"] == pytest.approx(100 * math.log(1.5) / total)
    assert t.loc["all together", "share of Σ (%)"] == pytest.approx(100 * math.log(2.2) / total)
    assert t.loc["Σ of 3 blocks alone", "% of model params removed"] == pytest.approx(-3.0)
    paths = figures.ablation_blocks(pd.DataFrame(rows), tmp_path / "ablation_blocks")
    assert all(p.stat().st_size > 10_000 for p in paths)


def test_calibration_table_orders_settings_and_counts_tokens(tmp_path):
    from analysis import ablations, figures

    base = dict(eval="perplexity", model="m", method="whiten", layers="all-grouped", rank_value=10.0,
                dense_perplexity=5.0, skip_first=0, blocks="", perplexity_increase_percent=0.0, calibration="oneshot",
                calibration_corpus="stdlib", calibration_seq_len=1024)
    rows = [dict(base, calibration_windows=n, perplexity=5 + 1 / n) for n in (64, 8, 16)]
    rows += [dict(base, calibration_windows=32, calibration_seq_len=512, perplexity=5.05),
             dict(base, calibration_windows=16, calibration_corpus="stdlib-tests", perplexity=5.2),
             dict(base, calibration_windows=16, calibration="sequential", perplexity=5.01),
             dict(base, calibration_windows=16, skip_first=1, perplexity=9.0),  # another statistic: left out
             dict(base, calibration_windows=16, blocks="blocks3", perplexity=9.0)]  # one block: left out
    t = ablations.calibration_table(pd.DataFrame(rows))
    assert list(t.calibration) == ["32 × 512 stdlib", "8 × 1,024 stdlib", "16 × 1,024 stdlib", "64 × 1,024 stdlib",
                                   "16 × 1,024 stdlib-tests", "16 × 1,024 stdlib, sequential"]
    assert list(t["calibration tokens"])[:4] == [16384, 8192, 16384, 65536]
    assert t["Δ log ppl"].iloc[3] == pytest.approx(math.log(1 + 1 / 320))
    paths = figures.ablation_calibration(pd.DataFrame(rows), tmp_path / "ablation_calibration")
    assert all(p.stat().st_size > 10_000 for p in paths)


def test_humaneval_is_paired_with_the_perplexity_of_the_same_compression(tmp_path):
    """Pairs share (model, method, layers, rank); dense pairs with an increase of 0 by definition; a HumanEval
    point without a perplexity run is left out; pass@1 falling as perplexity rises gives Spearman ρ = -1."""
    from analysis import ablations, figures

    base = dict(model="m", method="lord", layers="mlp_down", skip_first=0, blocks="", dense_perplexity=4.0,
                rank_unit="reduction")
    rows = [dict(base, eval="humaneval", method="dense", layers="none", rank_value=0.0, pass_at_1=40.0,
                 pass_at_1_ci_low=33.0, pass_at_1_ci_high=47.0)]  # results hold pass@k in %
    for rank, ppl, p in ((30, 4.4, 30.0), (50, 5.0, 10.0), (60, 6.0, 5.0)):
        rows.append(dict(base, eval="humaneval", rank_value=float(rank), pass_at_1=p, pass_at_1_ci_low=None,
                         pass_at_1_ci_high=None))
        if rank != 60:
            rows.append(dict(base, eval="perplexity", rank_value=float(rank), perplexity=ppl,
                             perplexity_increase_percent=100 * (ppl / 4 - 1)))
    t, rho = ablations.humaneval_vs_perplexity(pd.DataFrame(rows))
    assert list(t["rank"]) == ["", "reduction 30", "reduction 50"]
    assert t["Δ log ppl"].tolist() == pytest.approx([0, math.log(1.1), math.log(1.25)])
    assert t["pass@1 relative to dense %"].tolist() == pytest.approx([100, 75, 25])
    assert rho == {"m": (pytest.approx(-1.0), 3)}
    paths = figures.humaneval_vs_perplexity(t, rho, tmp_path / "humaneval_vs_perplexity")
    assert all(p.stat().st_size > 10_000 for p in paths)


def test_humaneval_pairs_only_the_same_compression_never_a_budget_with_a_rank_reduction():
    """Issue 34: the table paired pareto_humaneval's budget runs with rank-reduction perplexity runs of the same
    method and value, and printed a pandas Series when two dense runs existed. A budget run pairs with the budget
    run of the same allocation, a stage with the same stage, and the dense row is the plain dense run."""
    from analysis import ablations

    base = dict(model="m", method="whiten", layers="all", skip_first=0, blocks="", setting="", calibration="oneshot",
                dense_perplexity=4.0, quant_bits=None, prune=None, corpus="stdlib", calibration_corpus="stdlib",
                calibration_draw=None, calibration_windows=16, calibration_seq_len=1024, humaneval_preset="greedy")
    he = dict(base, eval="humaneval", pass_at_1_ci_low=None, pass_at_1_ci_high=None)
    pp = dict(base, eval="perplexity")
    rows = [dict(he, method="dense", layers="none", rank_unit=None, rank_value=0.0, pass_at_1=40.0),
            dict(he, method="dense", layers="none", rank_unit=None, rank_value=0.0, pass_at_1=30.0,
                 setting="+lorainstructions100"),  # a trained dense run: not the baseline
            dict(he, rank_unit="budget-uniform", rank_value=10.0, pass_at_1=4.0),
            dict(he, rank_unit="budget-greedy", rank_value=10.0, pass_at_1=10.0, setting="+refit"),
            dict(he, rank_unit="budget-uniform", rank_value=10.0, pass_at_1=7.0, humaneval_preset="code_eval"),
            # listed first, and each differs from the HumanEval run in one thing only: the validation corpus, a
            # random calibration draw, fewer or shorter calibration windows -- none may pair
            dict(pp, rank_unit="budget-uniform", rank_value=10.0, perplexity=5.4, perplexity_increase_percent=36.0,
                 corpus="folder:distributed", calibration_corpus="folder:_inductor"),
            dict(pp, rank_unit="budget-uniform", rank_value=10.0, perplexity=6.0, perplexity_increase_percent=50.0,
                 calibration_draw=1.0),
            dict(pp, rank_unit="budget-uniform", rank_value=10.0, perplexity=6.1, perplexity_increase_percent=52.0,
                 calibration_windows=8),
            dict(pp, rank_unit="budget-uniform", rank_value=10.0, perplexity=6.1, perplexity_increase_percent=53.0,
                 calibration_seq_len=128),
            dict(pp, rank_unit="reduction", rank_value=10.0, perplexity=4.6, perplexity_increase_percent=15.0),
            dict(pp, rank_unit="budget-uniform", rank_value=10.0, perplexity=6.2, perplexity_increase_percent=55.0),
            dict(pp, rank_unit="budget-greedy", rank_value=10.0, perplexity=6.6, perplexity_increase_percent=65.0),
            dict(pp, rank_unit="budget-greedy", rank_value=10.0, perplexity=6.4, perplexity_increase_percent=60.0,
                 setting="+refit")]
    t, _ = ablations.humaneval_vs_perplexity(pd.DataFrame(rows))
    got = {(r["method"], r["rank"], r["setting"]): r["ppl increase %"] for _, r in t.iterrows()}
    assert got == {("dense", "", ""): 0.0, ("whiten", "budget-uniform 10", ""): 55.0,
                   ("whiten", "budget-greedy 10", "+refit"): 60.0}
    assert t["pass@1 relative to dense %"].tolist() == pytest.approx([100, 10, 25])


def test_quant_noise_table_measures_compression_over_the_noisy_dense_model():
    """By hand: clean dense 4, noisy dense 4.4 (noise alone: ln 1.1); compressed noisy 5.5 → ln(5.5/4.4) = ln 1.25
    over the noisy model, against ln(4.8/4) = ln 1.2 for the same compression of the clean model."""
    from analysis import ablations

    base = dict(eval="perplexity", model="m", layers="all-grouped", rank_value=10.0, dense_perplexity=4.0,
                skip_first=0, blocks="", perplexity_increase_percent=0.0)
    noisy = pd.DataFrame([dict(base, method="dense", layers="none", rank_value=0.0, perplexity=4.4),
                          dict(base, method="whiten", perplexity=5.5)])
    clean = pd.DataFrame([dict(base, method="whiten", perplexity=4.8)])
    t = ablations.quant_noise_table(noisy, clean).set_index("method")
    assert t.loc["whiten", "Δ log ppl, noisy model"] == pytest.approx(math.log(1.25))
    assert t.loc["whiten", "Δ log ppl, clean model"] == pytest.approx(math.log(1.2))
    assert t.loc["whiten", "noisy / clean"] == pytest.approx(math.log(1.25) / math.log(1.2))
    assert t.loc["whiten", "noise alone (Δ log ppl of the noisy dense model)"] == pytest.approx(math.log(1.1))
    assert list(t.index) == ["whiten"]  # the noisy dense run is the base, not a row


def test_size_table_orders_models_by_size_and_keeps_other_settings_out(tmp_path):
    """By hand: a larger model at the same compression, listed after the smaller one; a run with statistics
    without the first position (setting -skip1) or on one block is not part of the size trend."""
    from analysis import ablations

    base = dict(eval="perplexity", layers="all-grouped", method="whiten", rank_value=10.0, setting="", blocks="",
                calibration="oneshot", skip_first=0, target_params_removed_percent=-5.0)
    rows = [dict(base, model="big", params_dense=1.5e9, dense_perplexity=4.0, perplexity=5.0,
                 perplexity_increase_percent=25.0),
            dict(base, model="small", params_dense=1.35e8, dense_perplexity=8.0, perplexity=12.0,
                 perplexity_increase_percent=50.0),
            dict(base, model="small", params_dense=1.35e8, dense_perplexity=8.0, perplexity=99.0,
                 perplexity_increase_percent=1137.5, setting="-skip1"),
            dict(base, model="small", params_dense=1.35e8, dense_perplexity=8.0, perplexity=8.1,
                 perplexity_increase_percent=1.25, blocks="blocks3")]
    t = ablations.size_table(pd.DataFrame(rows))
    assert t.model.tolist() == ["small", "big"]
    assert t["Δ log ppl"].tolist() == pytest.approx([math.log(1.5), math.log(1.25)])
    from analysis import figures

    paths = figures.ablation_sizes(pd.DataFrame(rows), tmp_path / "sizes")
    assert paths and all(p.stat().st_size > 0 for p in paths)


def test_block_label_names_runs_of_blocks():
    from lord.architectures import block_label

    assert block_label(None) == "" and block_label([3]) == "blocks3"
    assert block_label([7, 0, 1, 2, 2]) == "blocks0-2+7" and block_label([0, 2, 4]) == "blocks0+2+4"


@pytest.mark.slow
def test_the_diagnosis_notebook_runs_on_the_published_results(tmp_path):
    """The diagnosis notebook reads the committed results and benchmarks (no model) and draws its figures."""
    import nbformat
    from nbclient import NotebookClient

    root = Path(__file__).resolve().parents[1]
    nb = nbformat.read(root / "notebooks" / "diagnosis.ipynb", as_version=4)
    os.environ["LORD_NOTEBOOK_OUT"] = str(tmp_path)
    try:
        NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(root)}}).execute()
    finally:
        del os.environ["LORD_NOTEBOOK_OUT"]
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    n = len(load_results(root / "results" / "published")[0])
    assert f"{n} results from results/published" in text
    assert "together / sum" in text
    assert (tmp_path / "ablation_layers.png").stat().st_size > 10_000


def test_the_validation_corpus_names_a_point_so_two_corpora_never_merge():
    """data=folder runs are named by their folder (validation and calibration apart), and the pareto summary keeps
    one block per (model, corpus): the same method and budget on two corpora are two points, not variants."""
    import pandas as pd

    from analysis.pareto import pareto_summary
    from analysis.results import SETTING, _calibration

    cal = {"mode": "oneshot", "n_windows": 16}
    folder = {"name": "folder", "path": "/x/torch/distributed", "calibration_path": "/x/torch/_inductor",
              "seq_len": 1024}
    assert _calibration({"calibration": cal, "data": folder})["corpus"] == "folder:distributed"
    assert _calibration({"calibration": cal, "data": folder})["calibration_corpus"] == "folder:_inductor"
    stdlib = _calibration({"calibration": cal, "data": {"name": "stdlib", "seq_len": 1024}})
    assert stdlib["corpus"] == "stdlib" and stdlib["calibration_corpus"] == "stdlib"
    assert "corpus" in SETTING
    row = {"eval": "perplexity", "model": "m", "method": "whiten", "setting": "", "rank_unit": "budget-uniform",
           "rank_value": 10.0, "target_params_removed_percent": 10.0, "perplexity": 11.0, "dense_perplexity": 10.0,
           "perplexity_increase_percent": 10.0, "dense_targets": 0, "compression_seconds": 1.0,
           "compression_peak_rss_mib": 1024.0}
    frame = pd.DataFrame([dict(row, corpus="stdlib"), dict(row, corpus="folder:distributed",
                                                           perplexity_increase_percent=20.0)])
    summary = pareto_summary(frame).set_index("corpus")
    assert summary.loc["stdlib", "10 % removed: ppl +%"] == 10.0
    assert summary.loc["folder:distributed", "10 % removed: ppl +%"] == 20.0


def test_the_pareto_humaneval_table_pairs_each_point_with_its_dense_run_and_its_perplexity():
    """pass@1 at a budget: the change is from the dense run of the same experiment (not another experiment's),
    and the perplexity increase is the same point's (model, corpus, method/allocation, budget) — not a neighbour's."""
    import pandas as pd

    from analysis.pareto import pareto_humaneval_table

    ppl = {"eval": "perplexity", "model": "m", "method": "whiten", "setting": "", "rank_unit": "budget-uniform",
           "target_params_removed_percent": 10.0, "perplexity": 11.0, "dense_perplexity": 10.0,
           "dense_targets": 0, "compression_seconds": 1.0, "compression_peak_rss_mib": 1024.0, "corpus": "stdlib",
           "experiment": "pareto"}
    he = {"eval": "humaneval", "model": "m", "setting": "", "corpus": "stdlib", "humaneval_preset": "greedy",
          "experiment": "pareto_humaneval", "target_params_removed_percent": 10.0, "pass_at_1_ci_low": 0.0,
          "pass_at_1_ci_high": 50.0}
    frame = pd.DataFrame([
        dict(ppl, rank_value=10.0, perplexity_increase_percent=50.0),
        dict(ppl, rank_value=20.0, perplexity_increase_percent=150.0),
        dict(ppl, rank_unit="budget-svdllm_v2", rank_value=10.0, perplexity_increase_percent=60.0),
        dict(he, method="dense", rank_unit="reduction", rank_value=50.0, pass_at_1=40.0),
        dict(he, method="dense", rank_unit="reduction", rank_value=50.0, pass_at_1=99.0, experiment="table1"),
        dict(he, method="whiten", rank_unit="budget-uniform", rank_value=10.0, pass_at_1=5.0),
        dict(he, method="whiten", rank_unit="budget-svdllm_v2", rank_value=10.0, pass_at_1=6.0),
        dict(he, method="whiten", rank_unit="budget-uniform", rank_value=20.0, pass_at_1=1.0),
    ])
    t = pareto_humaneval_table(frame).set_index(["method", "budget %"])
    assert list(t["dense pass@1"].unique()) == [40.0]
    assert t.loc[("SVD-LLM (whiten, uniform)", 10.0), "change from dense (points)"] == -35.0
    assert t.loc[("SVD-LLM (whiten, uniform)", 10.0), "ppl increase %"] == 50.0
    assert t.loc[("SVD-LLM V2 (whiten, svdllm_v2)", 10.0), "ppl increase %"] == 60.0
    assert t.loc[("SVD-LLM (whiten, uniform)", 20.0), "ppl increase %"] == 150.0
    assert len(t) == 3  # dense rows are the baseline, not points


def test_humaneval_points_are_compared_with_the_reference_task_by_task():
    """pareto.humaneval_against_reference: the paired pass@1 difference resamples the tasks for both runs together,
    so a run that passes the reference's tasks plus k more is better by exactly 100 k / n, and no resample's difference
    is below 0 (with 5 extra of 40 tasks, a resample misses all 5 with probability 0.875^40 < 0.5 %, below the
    interval's tail, so the interval excludes 0); a copy of the reference differs by [0, 0], and runs on
    other tasks or without per-task counts get no row."""
    import pandas as pd

    from analysis.pareto import humaneval_against_reference
    from analysis.results import _task_pass

    assert _task_pass({"per_task": {"T/0": {"correct": 1, "n": 2}, "T/1": {"correct": 0, "n": 1}}}) == \
        {"T/0": 50.0, "T/1": 0.0}
    assert _task_pass({}) is None  # a result from before per-task counts
    n = 40
    ref_tasks = {f"T/{i}": 100.0 if i < 10 else 0.0 for i in range(n)}
    he = {"eval": "humaneval", "model": "m", "setting": "", "humaneval_preset": "greedy", "experiment": "e",
          "rank_value": 10.0}
    frame = pd.DataFrame([
        dict(he, method="dense", rank_unit="reduction", rank_value=0.0, task_pass=None),
        dict(he, method="kfac", rank_unit="budget-loss_estimate", task_pass=ref_tasks),
        dict(he, method="kfac", rank_unit="budget-measured",
             task_pass={t: 100.0 if int(t[2:]) < 15 else 0.0 for t in ref_tasks}),
        dict(he, method="whiten", rank_unit="budget-uniform", task_pass=dict(ref_tasks)),
        dict(he, method="whiten", rank_unit="budget-svdllm_v2", task_pass={"T/0": 100.0, "T/1": 0.0}),
        dict(he, method="asvd", rank_unit="budget-uniform", task_pass=None),
        dict(he, method="whiten", rank_unit="budget-uniform", rank_value=20.0, task_pass=dict(ref_tasks)),
    ])
    t = humaneval_against_reference(frame).set_index("run")
    assert list(t.index) == ["kfac, measured", "SVD-LLM (whiten, uniform)"]  # no reference at 20 %, no other tasks
    better = t.loc["kfac, measured"]
    assert better["Δ pass@1 vs the reference (points)"] == pytest.approx(100 * 5 / n)
    low = float(better["95 % CI"].strip("[]").split(",")[0])
    assert better.verdict == "better" and low > 0
    assert (better["tasks only the run passes"], better["tasks only the reference passes"]) == (5, 0)
    same = t.loc["SVD-LLM (whiten, uniform)"]
    assert same["Δ pass@1 vs the reference (points)"] == 0 and same["95 % CI"] == "[0, 0]"
    assert same.verdict == "not resolved"


def test_composition_tables_show_pass_at_1_as_recorded_next_to_the_same_experiments_dense_run():
    """Results hold pass@1 in % (43.3, not 0.433): the Table 2 / Fig. 6 views print it as recorded, and the dense
    value is the plain dense run's pass@1 of the same model and experiment (not a pruned or quantized one's)."""
    import pandas as pd

    from analysis.composition import pruning_table, quantization_table

    base = {"eval": "humaneval", "model": "m", "layers": "mlp_down", "params_compressed": 1e6,
            "float_model_bytes": None, "float_linear_bytes": None, "model_bytes": 2**20, "model_bytes_on_disk": 2**20,
            "linear_bytes": 2**19, "nonzero_params": 5e5}
    quant = pd.DataFrame([
        dict(base, experiment="table2_quantization", method="dense", rank_value=0.0, quant_bits=None, prune=None,
             pass_at_1=43.3),
        dict(base, experiment="table2_quantization", method="dense", rank_value=0.0, quant_bits=4.0, prune=None,
             pass_at_1=42.1),
        dict(base, experiment="table2_quantization", method="lord_meanfix", rank_value=27.08, quant_bits=None,
             prune=None, pass_at_1=14.0)])
    q = quantization_table(quant)
    assert sorted(q.value) == [14.0, 42.1, 43.3] and set(q["dense value"]) == {43.3}
    prune = pd.DataFrame([
        dict(base, experiment="fig6_pruning", method="dense", rank_value=0.0, quant_bits=None, prune="2:4",
             pass_at_1=3.0),
        dict(base, experiment="fig6_pruning", method="dense", rank_value=0.0, quant_bits=None, prune=None,
             pass_at_1=43.3)])
    p = pruning_table(prune)
    assert sorted(p.value) == [3.0, 43.3] and set(p["dense value"]) == {43.3}


def test_a_method_keeps_its_colour_in_every_pareto_panel(tmp_path):
    """A panel that lacks some methods (the 1.5B run has four of seven) must not shift the others' colours."""
    import matplotlib
    import pandas as pd

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from analysis import pareto

    row = {"eval": "perplexity", "setting": "", "corpus": "stdlib", "rank_value": 10.0,
           "target_params_removed_percent": 10.0, "perplexity": 11.0, "dense_perplexity": 10.0,
           "perplexity_increase_percent": 10.0, "dense_targets": 0, "compression_seconds": 1.0,
           "compression_peak_rss_mib": 1024.0}
    frame = pd.DataFrame([dict(row, model="a", method="asvd", rank_unit="budget-uniform"),
                          dict(row, model="a", method="whiten", rank_unit="budget-uniform"),
                          dict(row, model="b", method="whiten", rank_unit="budget-uniform"),
                          dict(row, model="b", method="whiten", rank_unit="budget-svdllm_v2")])
    seen = {}
    original = plt.subplots

    def capture(*args, **kwargs):
        fig, axes = original(*args, **kwargs)
        seen["axes"] = axes
        return fig, axes

    plt.subplots = capture
    try:
        pareto.pareto_figure(frame, tmp_path / "p")
    finally:
        plt.subplots = original
    colour = {}
    for ax in seen["axes"][0]:
        for line in ax.get_lines():
            colour.setdefault(line.get_label(), set()).add(matplotlib.colors.to_hex(line.get_color()))
    assert set(colour) == {"ASVD (asvd, uniform)", "SVD-LLM (whiten, uniform)", "SVD-LLM V2 (whiten, svdllm_v2)"}
    assert all(len(c) == 1 for c in colour.values())
    assert len(set.union(*colour.values())) == 3


def test_humaneval_failure_outcomes_are_read_from_the_samples_next_to_a_result(tmp_path):
    """Each sample gets one outcome from its verdict (both verdict formats the sandbox has written), an empty
    body is told apart from a wrong answer, and a completion that ran on unstopped and repeats itself is a loop."""
    import json

    import pandas as pd

    from analysis import humaneval_failures as hf

    assert hf.outcome("    return 1\n", "failed (exit 1: AssertionError:)", False) == "wrong answer"
    assert hf.outcome("    return 1\n", "failed (AssertionError: Error)", False) == "wrong answer"
    assert hf.outcome("    x = (\n", "failed (exit 1 before the end: SyntaxError: invalid syntax",
                      False) == "syntax error"
    assert hf.outcome("    return y\n", "failed (NameError: NameError: name 'y')", False) == "runtime error"
    assert hf.outcome("    # nothing\n    pass\n", "failed (exit 1: AssertionError:)", False) == "empty body"
    assert hf.outcome("    while 1: pass\n", "timed out", False) == "timed out"
    assert hf.outcome("    return 1\n", "failed (exit -9)", False) == "other"
    assert hf.repeated_share("a\nb\na\na\n") == 0.5 and hf.repeated_share("") == 0.0

    result = tmp_path / "dense.humaneval-greedy-abc.json"
    folder = result.with_suffix("")
    folder.mkdir()
    loop = "    >>> f(1)\n    True\n" * 10
    samples = [{"task_id": "T/0", "sample": 0, "completion": "    return 1\n", "raw": "    return 1\n\nif"},
               {"task_id": "T/1", "sample": 0, "completion": loop, "raw": loop},
               {"task_id": "T/2", "sample": 0, "completion": "    pass\n", "raw": "    pass\n\ndef"}]
    verdicts = [{"task_id": "T/0", "sample": 0, "passed": True, "outcome": "passed"},
                {"task_id": "T/1", "sample": 0, "passed": False, "outcome": "failed (exit 1 before the end: "
                                                                             "SyntaxError: invalid syntax)"},
                {"task_id": "T/2", "sample": 0, "passed": False, "outcome": "failed (exit 1: AssertionError:)"}]
    (folder / "samples-greedy-seed0.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    (folder / "results-greedy-seed0.jsonl").write_text("".join(json.dumps(v) + "\n" for v in verdicts))
    row = {"eval": "humaneval", "model": "m", "experiment": "e", "method": "dense", "layers": "none",
           "rank_unit": "reduction", "rank_value": 0.0, "setting": "", "pass_at_1": 100 / 3, "path": str(result)}
    t = hf.failures_table(pd.DataFrame([row, dict(row, path=str(tmp_path / "no-samples.json"))]))
    assert len(t) == 1
    r = t.iloc[0]
    assert (r.samples, r.passed, r["syntax error"], r["empty body"], r["wrong answer"]) == (3, 1, 1, 1, 0)
    assert (r.unstopped, r.looping) == (1, 1)
    assert pd.isna(r["ended by end-of-text"]) and r["median chars"] == len("    return 1\n")

    # samples that record why generation ended: a short body ended by the end-of-text token is unstopped but
    # no loop; "rule" is stopped whatever the text looks like
    recorded = [dict(samples[0], stop="rule"), dict(samples[1], stop="cap"),
                dict(samples[2], completion="    return 2\n", raw="    return 2\n", stop="eos")]
    (folder / "samples-greedy-seed0.jsonl").write_text("".join(json.dumps(s) + "\n" for s in recorded))
    r = hf.failures_table(pd.DataFrame([row])).iloc[0]
    assert (r.unstopped, r.looping, r["ended by end-of-text"], r["ran to the cap"]) == (2, 1, 1, 1)
    assert r.preset == "greedy"

    # a sampled run: every sample of every seed is counted, and the preset says it was sampled, with its seeds
    for seed in (0, 1):
        (folder / f"samples-code_eval-seed{seed}.jsonl").write_text(
            "".join(json.dumps(dict(s, sample=i)) + "\n" for s in recorded for i in range(2)))
        (folder / f"results-code_eval-seed{seed}.jsonl").write_text(
            "".join(json.dumps(dict(v, sample=i)) + "\n" for v in verdicts for i in range(2)))
    for name in ("samples-greedy-seed0.jsonl", "results-greedy-seed0.jsonl"):
        (folder / name).unlink()
    r = hf.failures_table(pd.DataFrame([dict(row, humaneval_preset="code_eval", humaneval_seeds=2)])).iloc[0]
    assert r.preset == "code_eval x 2 seeds" and r.samples == 12
    assert (r.unstopped, r["ran to the cap"], r.looping, r["ended by end-of-text"]) == (8, 4, 4, 4)


def test_two_humaneval_runs_compare_task_by_task(tmp_path):
    """compare_runs: tasks only one run passes, and how the other run's completions on them ended."""
    import json

    from analysis import humaneval_failures as hf

    loop = "    >>> f(1)\n    True\n" * 10

    def write(name, rows):  # rows: (task, passed, completion, raw)
        folder = tmp_path / name
        folder.mkdir()
        (folder / "samples-greedy-seed0.jsonl").write_text("".join(
            json.dumps({"task_id": t, "sample": 0, "completion": c, "raw": raw}) + "\n" for t, _, c, raw in rows))
        (folder / "results-greedy-seed0.jsonl").write_text("".join(
            json.dumps({"task_id": t, "sample": 0, "passed": p}) + "\n" for t, p, _, _ in rows))
        return tmp_path / f"{name}.json"

    ok = ("    return 1\n", "    return 1\n\nif")
    a = write("a", [("T/0", True, *ok), ("T/1", True, *ok), ("T/2", True, *ok), ("T/3", False, *ok)])
    b = write("b", [("T/0", True, *ok), ("T/1", False, loop, loop), ("T/2", False, *ok), ("T/3", True, *ok)])
    assert hf.compare_runs(a, b) == {"tasks": 4, "both pass": 1, "only A passes": 2, "only B passes": 1,
                                     "only A: B unstopped": 1, "only A: B looping": 1}
    with pytest.raises(SystemExit, match="no samples"):
        hf.compare_runs(a, tmp_path / "none.json")


def test_results_of_an_experiment_no_preset_names_get_the_general_tables_and_figures():
    """An ad-hoc sweep (experiment_name=adhoc, or any name) is analysed too; a preset gets exactly its own list."""
    from analysis.artefacts import ALWAYS, FOR_ANY_RESULTS
    from analysis.make_all import artefacts_for, preset_artefacts

    presets = preset_artefacts()
    assert set(artefacts_for(["my_sweep"], presets)) == set(ALWAYS) | set(FOR_ANY_RESULTS)
    for preset, names in presets.items():  # a preset gets exactly its own list, whatever it is
        assert set(artefacts_for([preset], presets)) == set(ALWAYS) | set(names)
    assert set(artefacts_for(["pareto"], presets)) == set(ALWAYS) | {"pareto"}


def test_table1_sets_greedy_and_sampled_pass_at_k_next_to_the_papers_values():
    """Issue 36: one row per (model, method, rank) with greedy pass@1, sampled pass@1 and pass@10 and their
    intervals, each preset's change from its own dense run, and the paper's StarCoder-16B values at that rank."""
    base = dict(eval="humaneval", model="m", layers="mlp_down", variant="", ranks="653", n_tasks=164,
                humaneval_seeds=1, max_new_tokens=512, pass_at_10=None, pass_at_10_ci_low=None,
                pass_at_10_ci_high=None)
    rows = [dict(base, method="dense", rank_value=0.0, humaneval_preset="greedy", pass_at_1=43.0,
                 pass_at_1_ci_low=36.0, pass_at_1_ci_high=51.0),
            dict(base, method="dense", rank_value=0.0, humaneval_preset="code_eval", pass_at_1=40.0,
                 pass_at_1_ci_low=35.0, pass_at_1_ci_high=45.0, pass_at_10=60.0, pass_at_10_ci_low=52.0,
                 pass_at_10_ci_high=67.0),
            dict(base, method="lord", rank_value=27.08, humaneval_preset="greedy", pass_at_1=35.0,
                 pass_at_1_ci_low=28.0, pass_at_1_ci_high=43.0),
            dict(base, method="lord", rank_value=27.08, humaneval_preset="code_eval", pass_at_1=30.0,
                 pass_at_1_ci_low=25.0, pass_at_1_ci_high=35.0, pass_at_10=50.0, pass_at_10_ci_low=42.0,
                 pass_at_10_ci_high=58.0)]
    t = tables.humaneval_table(pd.DataFrame(rows)).set_index("method")
    assert t.loc["lord", "greedy pass@1 change from dense"] == pytest.approx(-8.0)
    assert t.loc["lord", "sampled pass@1 change from dense"] == pytest.approx(-10.0)
    assert t.loc["lord", "sampled pass@10"] == 50.0 and t.loc["lord", "sampled pass@10 95 % CI"] == "[42, 58]"
    assert t.loc["lord", "paper StarCoder-16B pass@1"] == pytest.approx(33.18)  # Table 1 at 27.08 %
    assert t.loc["dense", "paper StarCoder-16B pass@10"] == pytest.approx(48.28)
    assert list(t.index) == ["dense", "lord"]
    # seed 0 first, then five seeds: the five-seed run (which holds seed 0's samples) stands for the point
    five = dict(rows[3], humaneval_seeds=5, pass_at_1=31.0, pass_at_10=52.0, pass_at_10_ci_low=47.0,
                pass_at_10_ci_high=57.0)
    t = tables.humaneval_table(pd.DataFrame([rows[3], five, rows[2]])).set_index("method")
    assert len(t) == 1 and t.loc["lord", "sampled pass@10"] == 52.0
    assert t.loc["lord", "sampled: seeds, max new tokens"] == "5, 512"
    # the columns keep their order whichever preset's run comes first
    assert list(t.columns[:6]) == ["model", "layers", "% rank reduction", "ranks", "greedy pass@1",
                                   "greedy pass@1 95 % CI"]


def test_the_paper_tables_leave_out_draws_budgets_and_a_saved_checkpoint_loaded_again(tmp_path):
    """``Analysis.standard`` (what the paper-style tables read) keeps only runs at the paper's settings on a zoo or
    hub model: a calibration draw, a budget run, a run with an intervention, and a saved lord checkpoint loaded
    again (model source ``lord-compressed``, named by its folder) each stay out."""
    from analysis.artefacts import Analysis

    base = {"setting": "", "blocks": "", "rank_unit": "reduction", "calibration_draw": None, "model_source": "zoo"}
    rows = {"paper": {}, "draw": {"calibration_draw": 2}, "budget": {"rank_unit": "budget-greedy"},
            "skip": {"setting": "-skip1"}, "loaded": {"model_source": "lord-compressed"}, "hub": {"model_source": None}}
    e = pd.DataFrame([{**base, **change, "name": name} for name, change in rows.items()])
    assert sorted(Analysis(everything=e, out=tmp_path).standard.name) == ["hub", "paper"]


def test_the_anchor_table_counts_what_each_layer_of_the_record_did(tmp_path):
    """By hand: three layers in blocks 0, 1 and 3; the fitted (ridge) objective rises for one beyond rounding;
    two are worse on the held-out batch; two chose the largest ridge of the grid."""
    from analysis.anchor_fit import anchor_fit_table

    def layer(name, block, before, after, ridge):
        return {"name": name, "block": block, "objective_before": 1.0, "objective_after": 2.0,  # unridged: ignored
                "ridge_objective_before": before, "ridge_objective_after": after, "ridge": ridge}

    record = {"fit": "both", "ridges": [1e-6, 0.01, 0.1], "seconds": 3.0, "held_out_worse": ["a", "c"],
              "targets": [layer("a", 0, 1.0, 1.0 + 1e-9, 0.1), layer("b", 1, 1.0, 1.1, 0.1),
                          layer("c", 3, 1.0, 0.5, 0.01)]}
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"stages": {"anchor": record, "calibrate": {}}}))
    other = tmp_path / "s.json"
    other.write_text(json.dumps({"stages": {"calibrate": {}}}))  # no anchor stage: no row
    df = pd.DataFrame([{"model": "m", "method": "whiten", "rank_unit": "budget-uniform", "rank_value": 10, "path": p}
                       for p in (path, other)])
    row = anchor_fit_table(df).iloc[0]
    assert len(anchor_fit_table(df)) == 1
    assert (row["layers fitted"], row["objective raised on calibration"],
            row["worse on the held-out batch"]) == (3, 1, 2)
    assert row["blocks of those"] == "0, 3" and row["at the largest ridge"] == 2
    assert (row["most chosen ridge"], row["layers choosing it"]) == (0.1, 2)
    assert row["anchor settings"] == "block, euclidean" and row["kept their decomposition"] == ""
    path.write_text(json.dumps({"stages": {"anchor": {**record, "order": "sublayer", "metric": "loss",
                                                      "keep_better": True, "kept": ["a"]}}}))
    row = anchor_fit_table(df).iloc[0]
    assert row["anchor settings"] == "sublayer, loss, keep_better" and row["kept their decomposition"] == "1"


def test_the_pareto_figure_draws_the_interval_of_each_point_that_has_one(tmp_path):
    """A point with a 95 % interval gets an error bar from its low to its high end; a point without ("n/a") none."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from analysis import pareto

    assert pareto._bounds("[9.55, 17.5]") == (9.55, 17.5) and pareto._bounds("n/a") is None
    row = {"eval": "perplexity", "setting": "", "corpus": "stdlib", "model": "a", "method": "kfac",
           "rank_unit": "budget-loss_estimate", "target_params_removed_percent": 10.0, "dense_perplexity": 10.0,
           "dense_targets": 0, "compression_seconds": 1.0, "compression_peak_rss_mib": 1024.0}
    frame = pd.DataFrame([dict(row, rank_value=10.0, perplexity=11.0, perplexity_increase_percent=10.0,
                               ppl_increase_ci="[8, 12]"),
                          dict(row, rank_value=20.0, target_params_removed_percent=20.0, perplexity=13.0,
                               perplexity_increase_percent=30.0, ppl_increase_ci="n/a")])
    seen = {}
    original = plt.subplots

    def capture(*args, **kwargs):
        seen["fig"], axes = original(*args, **kwargs)
        seen["axes"] = axes
        return seen["fig"], axes

    plt.subplots = capture
    try:
        pareto.pareto_figure(frame, tmp_path / "p")
    finally:
        plt.subplots = original
    bars = [c for c in seen["axes"][0][0].collections if isinstance(c, matplotlib.collections.LineCollection)]
    assert len(bars) == 1 and len(bars[0].get_segments()) == 1
    (x0, y0), (x1, y1) = bars[0].get_segments()[0]
    assert (x0, x1) == (10.0, 10.0) and sorted((y0, y1)) == [8.0, 12.0]


def test_the_refit_diagnosis_pairs_each_refit_run_with_the_run_without_refit_on_the_same_windows(tmp_path):
    """By hand: two runs without refit (16 and 64 windows) and two with (16 windows: one skipping the first position);
    each refit run's difference is its windows' mean Δ minus that of the run without refit on the same windows,
    and the record's medians are what its layers say."""
    import numpy as np

    from analysis.intervals import difference_interval
    from analysis.refit_diagnosis import refit_diagnosis_table

    def layer(block, ratio, share, held=None):
        return {"block": block, "objective_before": 2.0, "objective_after": 2.0 * ratio,
                "first_position_residual_share": share, **({"held_out_before": 1.0, "held_out_after": held}
                                                            if held is not None else {})}

    records = {"skip": {"skip_first": 1, "ridges": [1e-6], "seconds": 5.0,
                        "targets": [layer(0, 0.5, 0.1), layer(1, 0.7, 0.3), layer(2, 0.9, 0.2)]},
               "ridge": {"skip_first": 0, "ridges": [1e-6, 1.0], "seconds": 6.0, "order": "sublayer",
                         "targets": [layer(0, 0.4, 0.01, 2.0), layer(1, 0.6, 0.03, 0.5)]}}
    g = np.random.default_rng(0)
    runs = []
    for name, setting, windows in (("plain16", "", 16), ("plain64", "", 64), ("skip", "+refit", 16),
                                   ("ridge", "+refit", 16)):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"stages": {"refit": records[name]} if name in records else {}}))
        runs.append({"eval": "perplexity", "model": "m", "method": "whiten", "rank_unit": "budget-greedy",
                     "rank_value": 40, "setting": setting, "calibration_windows": windows,
                     "calibration_seq_len": 1024, "perplexity_increase_percent": 100.0,
                     "window_deltas": g.normal(1.0, 0.1, 8), "path": str(path)})
    df = pd.DataFrame(runs)
    t = refit_diagnosis_table(df)
    assert len(t) == 4 and list(t["calibration windows"]) == [16, 16, 16, 64]
    plain = t[t["layers refitted"].isna()]
    assert len(plain) == 2 and plain["Δ log ppl vs no refit"].isna().all()
    skip = t[t["refit.skip_first"] == 1].iloc[0]
    expected = difference_interval(runs[2]["window_deltas"], runs[0]["window_deltas"])
    assert skip["Δ log ppl vs no refit"] == pytest.approx(expected.estimate)
    assert skip["layers refitted"] == 3 and skip["calibration objective after/before (median)"] == pytest.approx(0.7)
    assert skip["first position's residual share (median)"] == pytest.approx(0.2)
    assert skip["first position vs a typical one (median ×)"] == pytest.approx(0.2 * 1024)
    assert skip["first position's residual share (largest)"] == pytest.approx(0.3)
    assert skip["layer with the largest share"] == "block 1"
    assert skip["refit.order"] == "block"  # a record from before refit.order: its layers were fitted together
    assert pd.isna(skip["held-out after/before (median)"]) and skip["ridge chosen on held-out from"] == ""
    ridge = t[t["ridge chosen on held-out from"] != ""].dropna(subset=["layers refitted"]).iloc[0]
    assert ridge["ridge chosen on held-out from"] == "1e-06, 1" and ridge["held-out after/before (median)"] == 1.25
    assert ridge["refit.order"] == "sublayer"


def test_a_variant_is_named_only_where_the_frame_shows_more_than_one():
    """Variants are marked over every result; one preset's table names one only where it holds two runs of a point."""
    from analysis.results import SETTING, without_lone_variants

    base = {k: "x" for k in SETTING if k != "variant"}
    df = pd.DataFrame([{**base, "rank_value": 10, "variant": "calibration.n_windows=16"},
                       {**base, "rank_value": 20, "variant": "calibration.n_windows=16"},
                       {**base, "rank_value": 20, "variant": "calibration.n_windows=64"}])
    out = without_lone_variants(df)
    assert list(out.variant) == ["", "calibration.n_windows=16", "calibration.n_windows=64"]
    assert list(df.variant)[0] == "calibration.n_windows=16"  # the input is not changed


def test_stage_differences_pair_a_stage_with_the_same_run_without_it():
    import numpy as np

    from analysis.intervals import difference_interval, fmt
    from analysis.pareto import stage_differences

    base = np.array([0.10, 0.12, 0.08, 0.11, 0.09, 0.10, 0.13, 0.07])
    worse = base + np.array([0.05, 0.06, 0.04, 0.05, 0.07, 0.05, 0.06, 0.04])  # every window worse
    noise = base + np.array([0.01, -0.01, 0.02, -0.02, 0.01, -0.01, 0.015, -0.015])

    def row(setting, deltas, windows=16, method="kfac"):
        return {"eval": "perplexity", "rank_unit": "budget-loss_estimate", "model": "m", "rank_value": 10,
                "method": method, "calibration_windows": windows, "setting": setting, "window_deltas": deltas}
    df = pd.DataFrame([row(None, base), row("+anchor", worse), row("+refit-sublayer", noise), row("-neurons", noise),
                       row("+refit", worse, windows=64),           # no run without the stage on its windows
                       row("+refit", worse, method="whiten")])     # nor of its method
    t = stage_differences(df)
    assert list(t.run) == ["MLP neurons + kfac, loss_estimate", "kfac, loss_estimate +anchor",
                           "kfac, loss_estimate +refit-sublayer"]
    assert set(t.against) == {"kfac, loss_estimate"}
    anchored = t.iloc[1]
    assert math.isclose(anchored["Δ log ppl vs the run without it"], float(worse.mean() - base.mean()))
    assert anchored.verdict == "worse"
    assert anchored["95 % CI"] == fmt(difference_interval(worse, base))
    assert t.iloc[2].verdict == t.iloc[0].verdict == "not resolved"


def test_against_reference_pairs_each_curve_with_kfac_loss_estimate_on_the_same_windows():
    import numpy as np

    from analysis.intervals import difference_interval, fmt
    from analysis.pareto import against_reference

    ref = np.array([0.10, 0.12, 0.08, 0.11, 0.09, 0.10, 0.13, 0.07])
    worse = ref + np.array([0.05, 0.06, 0.04, 0.05, 0.07, 0.05, 0.06, 0.04])  # every window worse
    better = ref - 0.03

    def row(method, allocation, deltas, model="m", budget=10, corpus="stdlib", setting=None):
        return {"eval": "perplexity", "rank_unit": f"budget-{allocation}", "model": model, "rank_value": budget,
                "method": method, "setting": setting, "corpus": corpus, "window_deltas": deltas}
    df = pd.DataFrame([row("kfac", "loss_estimate", ref), row("whiten", "loss_estimate", worse, setting="-neurons"),
                       row("kfac", "measured", better),
                       row("whiten", "uniform", None),                              # no per-window NLL
                       row("whiten", "greedy", worse, corpus="folder:x"),           # no reference on that corpus
                       row("whiten", "greedy", worse, budget=20),                   # nor at that budget
                       row("whiten", "svdllm_v2", worse[:4])])                      # other windows
    t = against_reference(df)
    assert list(t.run) == ["kfac, measured", "MLP neurons + whiten, loss_estimate"]
    assert set(t.against) == {"kfac, loss_estimate"}
    assert list(t.verdict) == ["better", "worse"]
    assert math.isclose(t.iloc[1]["Δ log ppl vs the reference"], float(worse.mean() - ref.mean()))
    assert t.iloc[1]["95 % CI"] == fmt(difference_interval(worse, ref))


def test_a_coarser_sensitivity_grid_is_compared_with_the_most_options_window_by_window(tmp_path):
    """sensitivity_grid.grid_table reads each run's grid from its result file: the run with the most options (the
    default grid when a point has it) is the reference, with no difference of its own; a run whose per-window
    deltas are the reference's plus c differs by exactly c with an interval excluding 0; another budget or
    allocation is never paired with it."""
    import json

    import numpy as np
    import pandas as pd

    from analysis.sensitivity_grid import grid_table

    def row(grid, value, deltas, allocation="measured"):
        path = tmp_path / f"{allocation}-{value}-{len(grid)}.json"
        path.write_text(json.dumps({"compression": {"allocation": {"sensitivity": {"grid": grid}}}}))
        return {"eval": "perplexity", "model": "m", "corpus": "stdlib", "method": "kfac", "setting": "",
                "rank_unit": f"budget-{allocation}", "rank_value": value, "perplexity_increase_percent": 5.0,
                "window_deltas": np.asarray(deltas, dtype=float), "path": str(path)}

    base = np.linspace(0.01, 0.2, 30)
    frame = pd.DataFrame([row([10, 20, 30], 10.0, base), row([10, 30], 10.0, base + 0.05),
                          row([30], 20.0, base), row([10, 20, 30], 20.0, base - 1.0, allocation="loss_estimate")])
    t = grid_table(frame)
    assert list(zip(t["budget %"], t["options per matrix"])) == [(10.0, 3), (10.0, 2), (20.0, 1)]
    full, coarse, alone = t.iloc[0], t.iloc[1], t.iloc[2]
    assert full.against == "" and full["95 % CI of the difference"] == "" and alone.against == ""
    assert coarse.against == "10, 20, 30" and coarse["grid (% removed per option)"] == "10, 30"
    assert coarse["Δ log ppl vs the reference grid"] == pytest.approx(0.05)
    assert coarse.verdict == "worse"
    default = [10, 20, 30, 40, 50, 60, 70]  # preferred as the reference over a grid with more options
    t = grid_table(pd.DataFrame([row([5] + default, 30.0, base - 0.01), row(default, 30.0, base)]))
    assert list(t.against) == ["10, 20, 30, 40, 50, 60, 70", ""]
    assert t["Δ log ppl vs the reference grid"].iloc[0] == pytest.approx(-0.01) and t.verdict.iloc[0] == "better"


def test_a_humaneval_point_shows_the_perplexity_of_the_pareto_tables_point_not_another_presets():
    """pareto_humaneval_table looks the perplexity up in the frame it is given: the artefact passes the pareto
    presets' runs, so a run of the same label and budget from another preset (a random calibration draw) cannot
    stand in for the pareto point."""
    import pandas as pd

    from analysis.pareto import pareto_humaneval_table

    he = {"model": "m", "setting": "", "humaneval_preset": "greedy", "experiment": "pareto_humaneval",
          "corpus": "stdlib"}
    ppl = {"eval": "perplexity", "model": "m", "corpus": "stdlib", "method": "whiten", "setting": "",
           "rank_unit": "budget-uniform", "rank_value": 10.0, "target_params_removed_percent": 10.0,
           "perplexity": 1.5, "dense_perplexity": 1.0, "dense_targets": 0, "n_targets": 7,
           "compression_seconds": 1.0, "compression_peak_rss_mib": 1024.0}
    frame = pd.DataFrame([
        dict(he, eval="humaneval", method="dense", rank_unit="reduction", rank_value=0.0, pass_at_1=40.0),
        dict(he, eval="humaneval", method="whiten", rank_unit="budget-uniform", rank_value=10.0, pass_at_1=5.0,
             target_params_removed_percent=10.0, pass_at_1_ci_low=1.0, pass_at_1_ci_high=9.0),
        dict(ppl, experiment="verdict_draws", perplexity_increase_percent=47.0),
        dict(ppl, experiment="pareto", perplexity_increase_percent=55.0)])
    pareto_only = frame[frame.experiment != "verdict_draws"]
    assert pareto_humaneval_table(frame, pareto_only)["ppl increase %"].tolist() == [55.0]

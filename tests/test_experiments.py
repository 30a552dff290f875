"""The real Hydra configs: every group option composes, presets expand through the sweeper, a tiny sweep runs
end to end, resumes and reuses bases, and a method or a stage registered outside lord runs end to end."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from experiments import records
from experiments.run import run
from hydra_plugins.lord_sweeper.lord_sweeper import expand
from lord.errors import LordError
from lord.presets import read_preset
from lord.zoo import cache_root

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
GROUPS = ["model", "data", "method", "layers", "eval", "logger", "profile", "paths"]
EXTRA = {"data=folder": ["data.path=/tmp"]}


def _compose(overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=overrides)


def preset_jobs(preset: str, command_line=()) -> list:
    return expand(str(CONF), preset, command_line)


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_of_every_group_composes_and_validates(group):
    options = sorted(p.stem for p in (CONF / group).glob("*.yaml"))
    assert options
    for opt in options:
        ov = f"{group}={opt}"
        cfg = _compose([ov, *EXTRA.get(ov, [])])
        _, evaluation = records.validate(cfg)
        assert records.result_path(cfg, evaluation, {"id": "0" * 64}).name.endswith("-00000000.json")


@pytest.mark.slow
def test_every_experiment_preset_expands_and_validates():
    # the presets whose command line must name something (the corpus folders of the generalisation check)
    needs = {"pareto_corpus": ["data.path=/corpus/validation", "data.calibration_path=/corpus/calibration"]}
    for preset in sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")):
        cfgs = preset_jobs(preset, needs.get(preset, ()))
        assert len(cfgs) > 1, preset
        assert len(cfgs) == read_preset(CONF / "experiment" / f"{preset}.yaml").points  # what `lord ls` counts
        stems = {records.result_stem(c, records.validate(c)[1]) for c in cfgs}
        assert len(stems) == len(cfgs)  # no two points share a result name (the identity is appended to it)
    # a key given on the command line wins over the preset's points
    assert {c.model.name for c in preset_jobs("fig1_rank_sweep", ["model=smollm2-135m"])} == {"smollm2-135m"}
    with pytest.raises(LordError, match="missing required value\\(s\\): data.path"):
        records.validate(preset_jobs("pareto_corpus")[0])


@pytest.mark.parametrize("overrides,match", [
    (["method.name=pca"], "method.name='pca' is unknown; allowed: asvd, dense, kfac, lord"),
    (["layers.kinds=[mlp_middle]"], "layers.kinds has unknown kind"),
    (["rank.value=150"], r"rank: rank reduction must be in \[0, 100\)"),
    (["rank.unit=rank", "rank.value=0"], "rank: an absolute rank must be a positive integer"),
    (["data=folder"], "missing required value\\(s\\): data.path"),
    (["stages=[calibrate,squeeze]"], "stages='squeeze' is unknown; allowed: anchor, calibrate"),
    (["method.name=lord", "+method.alpha=0.5"], "method 'lord' has no option\\(s\\) alpha"),
    (["layers.indices=[a]"], r"layers.indices=\['a'\] must be null \(every block\) or a non-empty list"),
    (["layers.indices=[-1]"], "layers.indices=\\[-1\\] must be null"),
    (["layers.indices=[24]"], r"layer indices \[24\] out of range: the model has blocks 0..23"),
    (["calibration.seq_len=1"], r"calibration.seq_len=1 must be null \(data.seq_len\) or an integer >= 2"),
    (["calibration.seq_len=64", "calibration.skip_first=64"], "leaves no position of a 64-token window"),
    (["data.calibration_corpus=lib"], "data.calibration_corpus='lib' is unknown; allowed: stdlib, stdlib-tests"),
])
def test_bad_configs_fail_before_any_model_loads(overrides, match, monkeypatch):
    import experiments.run as run_mod

    monkeypatch.setattr(run_mod, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(LordError, match=match):
        run(_compose(overrides))


def _cli(args, timeout=600, env=None):
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", **(env or {})}
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _private_cache(tmp_path) -> Path:
    """A cache of its own (statistics, bases, dense baselines) sharing the suite's converted zoo models."""
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "zoo").symlink_to(cache_root().resolve() / "zoo")
    return cache


@pytest.mark.slow
def test_main_job_sweep_on_a_real_model_resumes_and_reuses_bases(tmp_path, smollm2):
    cache = _private_cache(tmp_path)
    args = ["experiments.main", "model=smollm2-135m", "profile=quick", f"paths.results_dir={tmp_path}",
            f"paths.cache_dir={cache}", "rank.force=true"]
    p = _cli(args)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "sweep: 5 jobs: 5 ran, 0 skipped (already done), 0 failed" in p.stderr
    files = sorted((tmp_path / "main").rglob("*.json"))
    results = [json.loads(f.read_text()) for f in files]
    assert len(results) == 5 and all(r["status"] == "ok" for r in results)
    by_method = {(r["config"]["method"]["name"], r["config"]["rank"]["value"]): r for r in results}
    dense = by_method[("dense", 50)]["metrics"]["perplexity"]
    for (method, value), r in by_method.items():
        assert r["metrics"]["dense_perplexity"] == pytest.approx(dense)
        assert r["model"]["gguf_file_type"] == "MOSTLY_Q4_1"
        assert r["data"]["validation"]["content_sha256"] and r["environment"]["versions"]["torch"]
        hw = r["environment"]["hardware"]  # float32 results can depend on the CPU: each result names it
        assert hw["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and "cpu" in hw
        if method != "dense":
            assert r["compression"]["n_targets"] == 30 and r["metrics"]["perplexity"] > dense
    for method in ("lord", "svd"):  # more rank reduction hurts more, for both methods
        assert by_method[(method, 50)]["metrics"]["perplexity"] > by_method[(method, 25)]["metrics"]["perplexity"]
    assert (tmp_path / "main" / "summary.md").is_file() and (tmp_path / "main" / "rank_sweep.png").is_file()
    # the second rank of each method is a slice of the first one's bases (from the content-keyed disk cache)
    assert "bases_from_cache" not in by_method[("lord", 25)]["compression"]["reused"]
    assert by_method[("lord", 50)]["compression"]["reused"] == {"bases_from_cache": 30, "statistics_from_cache": True}
    assert by_method[("svd", 50)]["compression"]["reused"]["bases_from_cache"] == 30
    assert not list(tmp_path.glob("outputs")) and not (ROOT / "multirun").exists()
    # bases computed afresh in float64 (no reuse) give the same model to float32 precision
    fresh = run(_compose(["model=smollm2-135m", "profile=quick", f"paths.results_dir={tmp_path / 'fresh'}",
                          f"paths.cache_dir={cache}", "rank.force=true", "calibration.reuse_bases=false",
                          "+experiment=main", "method=lord", "rank.value=50"]))
    assert fresh["compression"]["reused"] == {"statistics_from_cache": True}
    assert fresh["metrics"]["perplexity"] == pytest.approx(by_method[("lord", 50)]["metrics"]["perplexity"], rel=1e-4)
    mtimes = [f.stat().st_mtime_ns for f in files]
    t0 = time.perf_counter()
    p = _cli(args)  # resume: every finished job is skipped
    assert p.returncode == 0 and "5 skipped (already done)" in p.stderr, p.stderr[-2000:]
    assert [f.stat().st_mtime_ns for f in files] == mtimes
    assert time.perf_counter() - t0 < 60


@pytest.mark.slow
def test_a_sweep_runs_every_job_then_exits_1_naming_the_failed_one(tmp_path, smollm2):
    p = _cli(["experiments.run", "-m", "model=smollm2-135m", "profile=quick", f"paths.results_dir={tmp_path}",
              "method=svd", "rank.value=40,1"])  # 1 % reduction of mlp_down adds parameters: that job fails
    assert p.returncode == 1, p.stderr[-2000:]
    assert "sweep: 2 jobs: 1 ran, 0 skipped (already done), 1 failed" in p.stderr
    assert "adds parameters" in p.stderr  # the failed point, named in the summary
    assert list((tmp_path / "adhoc/smollm2-135m/svd/mlp_down").glob("reduction-40-*.json"))


@pytest.mark.slow
def test_a_method_and_a_stage_registered_outside_lord_run_end_to_end(tmp_path, smollm2):
    """A new method is a Method subclass + a registry entry; a new stage likewise: no edit anywhere else."""
    from lord.methods import METHODS
    from lord.methods.base import Method, MethodConfig, moment_basis
    from lord.stages import STAGES, Stage

    from dataclasses import dataclass

    @dataclass
    class ToyConfig(MethodConfig):
        shrink: float = 1.0

    @METHODS.register("toy_whiten")
    class ToyWhiten(Method):  # whiten's basis, with the output bias scaled (an option of its own)
        config_class = ToyConfig

        def basis(self, W, moments, side):
            return moment_basis(W, moments, side, centred=False, method=self.name)

        def output_bias(self, basis, Qr, b):
            return None if b is None else self.config.shrink * b

    @STAGES.register("count_lowrank")
    class CountLowRank(Stage):  # a stage after decompose: records what it sees
        def apply(self, ctx):
            return {"lowrank_modules": sum(type(m).__name__ == "LowRankLinear" for m in ctx.model.modules())}

    base = ["model=smollm2-135m", "profile=quick", f"paths.results_dir={tmp_path}", "rank.value=40"]
    toy = run(_compose([*base, "method.name=toy_whiten", "+method.shrink=1.0",
                        "stages=[calibrate,decompose,count_lowrank]"]))
    ref = run(_compose([*base, "method=whiten", f"paths.save_dir={tmp_path / 'saved'}"]))
    assert toy["status"] == "ok" and toy["stages"]["count_lowrank"] == {"lowrank_modules": 30}
    from huggingface_hub import ModelCard

    card = (tmp_path / "saved" / "README.md").read_text()  # the saved model's card: what was measured, and where
    data = ModelCard.load(tmp_path / "saved" / "README.md").data
    assert [r.metric_value for r in data.eval_results] == [ref["metrics"]["perplexity"]]
    assert data.eval_results[0].dataset_revision == "sha256:" + ref["data"]["validation"]["content_sha256"]
    assert data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and "| method | whiten |" in card
    assert data.to_dict()["lord"]["result"] == str(Path(ref["path"]).relative_to(tmp_path))
    assert data.to_dict()["lord"]["result_identity"] == ref["identity"]["id"]
    assert f"{ref['params']['reduction_percent']:.2f} % removed" in card and str(tmp_path) not in card
    assert toy["compression"]["method"] == "toy_whiten"
    assert toy["metrics"]["perplexity"] == pytest.approx(ref["metrics"]["perplexity"], rel=1e-6)
    # a saved checkpoint is a model the pipeline evaluates (its config read by lord, no remote code)
    again = run(_compose([*base, f"model.name={tmp_path / 'saved'}", "method=dense"]))
    assert again["status"] == "ok" and again["metrics"]["perplexity"] == pytest.approx(ref["metrics"]["perplexity"],
                                                                                        rel=1e-9)


def test_rank_errors_are_config_errors_before_weights_load(tmp_path, smollm2, monkeypatch):
    import experiments.run as run_mod

    monkeypatch.setattr(run_mod, "load_model", lambda *a, **k: pytest.fail("weights were loaded"))
    with pytest.raises(LordError, match="adds parameters"):  # 1% reduction of mlp_down adds parameters
        run(_compose(["model=smollm2-135m", "profile=quick", f"paths.results_dir={tmp_path}", "rank.value=1"]))
    with pytest.raises(LordError, match="exceeds d_min=576"):
        run(_compose(["model=smollm2-135m", "profile=quick", f"paths.results_dir={tmp_path}", "rank.unit=rank",
                      "rank.value=5000"]))
    assert not list(tmp_path.rglob("*.json"))  # a config error writes no result


@pytest.mark.slow
def test_a_budget_with_greedy_allocation_and_refit_runs_end_to_end(tmp_path, smollm2):
    """rank.unit=budget through run(cfg): the allocation's record, the budget met, the refit stage's guarantee,
    each stage's peak memory, and the pareto table that analysis builds from the result."""
    from analysis.pareto import pareto_table
    from analysis.results import load_results

    base = ["model=smollm2-135m", "profile=quick", f"paths.results_dir={tmp_path}", "method=whiten",
            "layers=mlp_down", "rank.unit=budget", "rank.value=20"]
    r = run(_compose([*base, "rank.allocation=greedy", "stages=[calibrate,decompose,refit]"]))
    assert r["status"] == "ok", r.get("error")
    assert "budget-20-greedy" in r["path"] and "whiten+refit" in r["path"]
    alloc = r["compression"]["allocation"]
    assert alloc["criterion"] == "greedy" and 20 <= alloc["removed_percent"] < 21
    layers = r["stages"]["refit"]["targets"]
    assert len(layers) == r["compression"]["n_targets"]
    assert all(t["ridge_objective_after"] <= t["ridge_objective_before"] * (1 + 1e-9) for t in layers)
    assert r["stage_memory"]["decompose"]["rss_peak_mib"] >= r["stage_memory"]["decompose"]["rss_start_mib"] > 0
    uniform = run(_compose([*base, "rank.allocation=uniform"]))
    assert uniform["identity"]["id"] != r["identity"]["id"] and "budget-20-uniform" in uniform["path"]
    frame, problems = load_results(tmp_path)
    table = pareto_table(frame)
    assert not problems and set(table.method) == {"whiten, greedy +refit", "SVD-LLM (whiten, uniform)"}
    assert set(table.corpus) == {"stdlib"}
    assert (table["% of selection params removed"] >= 20).all()


def test_budget_and_method_errors_are_config_errors_before_weights_load(tmp_path, smollm2, monkeypatch):
    import experiments.run as run_mod

    monkeypatch.setattr(run_mod, "load_model", lambda *a, **k: pytest.fail("weights were loaded"))
    base = ["model=smollm2-135m", "profile=quick", f"paths.results_dir={tmp_path}"]
    with pytest.raises(LordError, match="more than this selection can remove"):
        run(_compose([*base, "rank.unit=budget", "rank.value=99.9"]))  # rank 1 everywhere removes 99.76 %
    with pytest.raises(LordError, match="use calibration.mode=oneshot"):
        run(_compose([*base, "method=asvd", "calibration.mode=sequential"]))
    with pytest.raises(LordError, match="put it after 'decompose'"):
        run(_compose([*base, "stages=[calibrate,refit,decompose]"]))
    refit = [*base, "stages=[calibrate,decompose,refit]"]
    with pytest.raises(LordError, match=r"refit has unknown key\(s\) \['skipfirst'\]; allowed: ridge, ridges"):
        run(_compose([*refit, "+refit.skipfirst=1"]))
    with pytest.raises(LordError, match=r"refit.skip_first=-1 must be a non-negative integer"):
        run(_compose([*refit, "+refit.skip_first=-1"]))
    with pytest.raises(LordError, match=r"refit.skip_first=4096 leaves no position of a \d+-token window"):
        run(_compose([*refit, "+refit.skip_first=4096"]))
    with pytest.raises(LordError, match=r"refit.order='forward' must be one of block, sublayer"):
        run(_compose([*refit, "+refit.order=forward"]))
    with pytest.raises(LordError, match=r"anchor has unknown key\(s\) \['ridge'\]; allowed: ridges, holdout"):
        run(_compose([*base, "stages=[calibrate,decompose,anchor]", "+anchor.ridge=0.1"]))
    anchor = [*base, "stages=[calibrate,decompose,anchor]", "calibration.batch_size=1"]
    with pytest.raises(LordError, match=r"anchor.metric='fisher' must be one of euclidean, loss"):
        run(_compose([*anchor, "method=kfac", "+anchor.metric=fisher"]))
    with pytest.raises(LordError, match=r"anchor.metric=loss weighs outputs by kfac's G, but method=whiten has"):
        run(_compose([*anchor, "method=whiten", "+anchor.metric=loss"]))
    with pytest.raises(LordError, match=r"anchor.prior='identity' must be one of zero, decomposition"):
        run(_compose([*anchor, "+anchor.prior=identity"]))
    with pytest.raises(LordError, match=r"anchor.keep_better=true compares .* set anchor.holdout > 0"):
        run(_compose([*anchor, "+anchor.keep_better=true", "+anchor.holdout=0", "+anchor.ridges=[0.01]"]))
    assert not list(tmp_path.rglob("*.json"))


@pytest.mark.slow
def test_wandb_offline_run_writes_its_files(tmp_path, smollm2):
    cfg = _compose(["model=smollm2-135m", "profile=quick", f"paths.results_dir={tmp_path}", "method=svd",
                    "logger=wandb"])
    r = run(cfg)
    assert r["status"] == "ok"
    runs = list((tmp_path / "wandb").rglob("offline-run-*"))
    assert runs and any(p.suffix == ".wandb" for p in runs[0].rglob("*"))


@pytest.mark.slow
@pytest.mark.parametrize("args,match", [
    (["experiments.run", "model=gpt5"], "error: model='gpt5' is unknown; allowed: codegen-16B-mono"),
    (["experiments.run", "-m", "method=lord,pca"], "error: method='pca' is unknown; allowed: asvd, dense, kfac, lord"),
    (["experiments.main", "layers=mlp_middle"], "error: layers='mlp_middle' is unknown; allowed: all"),
    (["experiments.run", "model=smollm2-135m", "rank.value=150"], "error: rank: rank reduction must be in [0, 100)"),
    (["experiments.run", "model=smollm2-135m", "rank.unit=budget", "rank.allocation=magic"],
     "error: rank: unknown rank allocation 'magic'; choose from: greedy, loss_estimate, measured, svdllm_v2, uniform"),
])
def test_cli_rejects_unknown_options_in_one_line(args, match, tmp_path):
    p = _cli(args, timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [p.stderr.strip()] and match in p.stderr


@pytest.mark.slow
def test_two_job_sweep_through_the_submitit_local_launcher(tmp_path, smollm2):
    p = _cli(["experiments.run", "-m", "launcher=submitit_local", "method=dense,svd", "model=smollm2-135m",
              "profile=quick", f"paths.results_dir={tmp_path}", f"hydra.sweep.dir={tmp_path}/multirun"])
    assert p.returncode == 0, p.stderr[-2000:]
    results = [json.loads(f.read_text()) for f in tmp_path.rglob("*.json") if "multirun" not in str(f)]
    assert sorted(r["config"]["method"]["name"] for r in results) == ["dense", "svd"]
    assert all(r["status"] == "ok" for r in results)
    assert list((tmp_path / "multirun").rglob("*_submitted.pkl"))  # it really went through submitit


def test_an_entry_point_shows_lords_messages_after_a_library_disabled_existing_loggers(capsys):
    """logging.config.dictConfig disables every logger that existed before it unless told otherwise (some libraries
    call it on import); the sweep's summary line must still reach stderr (it did not, depending on test order)."""
    import logging
    import logging.config

    from lord import logs

    sweep = logging.getLogger("lord.sweep")
    try:
        logging.config.dictConfig({"version": 1})  # disable_existing_loggers defaults to True
        assert sweep.disabled
        logs.configure()
        sweep.info("sweep: 1 jobs")
        assert "[lord.sweep] sweep: 1 jobs" in capsys.readouterr().err
    finally:
        sweep.disabled = False

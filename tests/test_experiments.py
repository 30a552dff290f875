"""The real Hydra configs: every group option composes, a tiny sweep runs end to end and resumes."""

import json
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from experiments import main as main_job
from experiments import pipeline
from experiments.run import run
from lord.errors import LordError

CONF = Path(__file__).resolve().parents[1] / "conf"
GROUPS = ["model", "data", "method", "layers", "eval", "logger", "profile", "paths"]
EXTRA = {"data=folder": ["data.path=/tmp"]}


def _compose(overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=overrides)


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_of_every_group_composes_and_validates(group):
    options = sorted(p.stem for p in (CONF / group).glob("*.yaml"))
    assert options
    for opt in options:
        ov = f"{group}={opt}"
        cfg = _compose([ov, *EXTRA.get(ov, [])])
        pipeline.validate(cfg)
        assert pipeline.result_path(cfg).suffix == ".json"


def test_every_experiment_preset_composes():
    for preset in sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")):
        cfgs = main_job.sweep_configs(preset, [])
        for cfg in cfgs:
            pipeline.validate(cfg)
        assert len({pipeline.result_path(c) for c in cfgs}) == len(cfgs)  # no two runs share a result file


@pytest.mark.parametrize("overrides,match", [
    (["method.name=pca"], "method.name='pca' is unknown; allowed: lord"),
    (["layers.kinds=[mlp_middle]"], "layers.kinds has unknown kind"),
    (["rank.value=150"], r"rank: rank reduction must be in \[0, 100\)"),
    (["rank.unit=rank", "rank.value=0"], "rank: an absolute rank must be a positive integer"),
    (["data=folder"], "missing required value\\(s\\): data.path"),
    (["calibration.mode=twice"], "calibration.mode='twice' is unknown"),
])
def test_bad_configs_fail_before_any_model_loads(overrides, match, monkeypatch):
    import experiments.run as run_mod

    monkeypatch.setattr(run_mod, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(LordError, match=match):
        run(_compose(overrides))


def test_main_job_sweep_on_a_real_model_and_resume(tmp_path, smollm2):
    overrides = ["model=smollm2-135m", "profile=quick", f"paths.results_dir={tmp_path}", "rank.force=true"]
    assert main_job.main(overrides) == 0
    files = sorted((tmp_path / "main").rglob("*.json"))
    results = [json.loads(f.read_text()) for f in files]
    assert len(results) == 5 and all(r["status"] == "ok" for r in results)
    by_method = {(r["config"]["method"]["name"], r["config"]["rank"]["value"]): r for r in results}
    dense = by_method[("dense", 50)]["metrics"]["perplexity"]
    for (method, value), r in by_method.items():
        assert r["metrics"]["dense_perplexity"] == pytest.approx(dense)
        assert r["model"]["gguf_file_type"] == "MOSTLY_Q4_1"
        assert r["data"]["validation"]["content_sha256"] and r["environment"]["versions"]["torch"]
        if method != "dense":
            assert r["compression"]["n_targets"] == 30 and r["metrics"]["perplexity"] > dense
    # more rank reduction hurts more, for both methods
    for method in ("lord", "svd"):
        assert by_method[(method, 50)]["metrics"]["perplexity"] > by_method[(method, 25)]["metrics"]["perplexity"]
    assert (tmp_path / "main" / "summary.md").is_file() and (tmp_path / "main" / "rank_sweep.png").is_file()
    # the second rank of each method is a slice of the first one's bases, and equals a fresh decomposition
    assert by_method[("lord", 25)]["timings"]["bases_reused"] is False
    assert by_method[("lord", 50)]["timings"]["bases_reused"] is True
    assert by_method[("svd", 50)]["timings"]["bases_reused"] is True
    fresh = run(_compose([*overrides[:2], f"paths.results_dir={tmp_path / 'fresh'}", "rank.force=true",
                          "calibration.reuse_bases=false", "+experiment=main", "method=lord", "rank.value=50"]))
    assert "bases_reused" not in fresh["timings"]
    assert fresh["metrics"]["perplexity"] == pytest.approx(by_method[("lord", 50)]["metrics"]["perplexity"], rel=1e-4)
    mtimes = [f.stat().st_mtime_ns for f in files]
    t0 = time.perf_counter()
    assert main_job.main(overrides) == 0  # resume: every finished job is skipped
    assert [f.stat().st_mtime_ns for f in files] == mtimes
    assert time.perf_counter() - t0 < 30


def test_failed_run_is_recorded_before_weights_load(tmp_path, smollm2, monkeypatch):
    import experiments.run as run_mod

    monkeypatch.setattr(run_mod, "load_model", lambda *a, **k: pytest.fail("weights were loaded"))
    cfg = _compose(["model=smollm2-135m", "profile=quick", f"paths.results_dir={tmp_path}", "rank.value=1"])
    r = run(cfg)  # 1% reduction of mlp_down adds parameters: recorded as failed, with the reason
    assert r["status"] == "failed" and "adds parameters" in r["error"]
    assert json.loads(Path(r["path"]).read_text())["status"] == "failed"
    r = run(_compose(["model=smollm2-135m", "profile=quick", f"paths.results_dir={tmp_path}", "rank.unit=rank",
                      "rank.value=5000"]))
    assert r["status"] == "failed" and "exceeds d_min=576" in r["error"]


def test_wandb_offline_run_writes_its_files(tmp_path, smollm2):
    cfg = _compose(["model=smollm2-135m", "profile=quick", f"paths.results_dir={tmp_path}", "method=svd",
                    "logger=wandb"])
    r = run(cfg)
    assert r["status"] == "ok"
    runs = list((tmp_path / "wandb").rglob("offline-run-*"))
    assert runs and any(p.suffix == ".wandb" for p in runs[0].rglob("*"))


def _cli(args, tmp_path, timeout=600):
    import os
    import subprocess
    import sys

    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, "-m", *args], cwd=Path(__file__).resolve().parents[1], env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("args,match", [
    (["experiments.run", "model=gpt5"], "error: model='gpt5' is unknown; allowed: codegen-16B-mono"),
    (["experiments.run", "-m", "method=lord,pca"], "error: method='pca' is unknown; allowed: dense, lord"),
    (["experiments.main", "layers=mlp_middle"], "error: layers='mlp_middle' is unknown; allowed: all"),
])
def test_cli_rejects_unknown_options_in_one_line(args, match, tmp_path):
    p = _cli(args, tmp_path, timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [p.stderr.strip()] and match in p.stderr


def test_two_job_sweep_through_the_submitit_local_launcher(tmp_path, smollm2):
    p = _cli(["experiments.run", "-m", "launcher=submitit_local", "method=dense,svd", "model=smollm2-135m",
              "profile=quick", f"paths.results_dir={tmp_path}", f"hydra.sweep.dir={tmp_path}/multirun"], tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    results = [json.loads(f.read_text()) for f in tmp_path.rglob("*.json") if "multirun" not in str(f)]
    assert sorted(r["config"]["method"]["name"] for r in results) == ["dense", "svd"]
    assert all(r["status"] == "ok" for r in results)
    assert list((tmp_path / "multirun").rglob("*_submitted.pkl"))  # it really went through submitit

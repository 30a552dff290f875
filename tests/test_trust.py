"""Results you can trust: run identity, exit codes, config checks before any weights load, cache integrity,
honest statistics. Each test reproduces a defect the earlier code had (see issue 'Results you can trust')."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from conftest import tiny_model
from experiments.run import run
from lord.errors import LordError

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
QUICK = ["model=smollm2-135m", "profile=quick"]


def _compose(overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=overrides)


def _code_folder(path: Path, n_files: int, seed: int) -> Path:
    """A folder corpus of real Python (stdlib files, chosen by seed), each long enough for a quick window."""
    import sysconfig

    files = sorted(p for p in Path(sysconfig.get_paths()["stdlib"]).glob("*.py") if p.stat().st_size > 4000)
    path.mkdir(parents=True)
    for i in range(n_files):
        src = files[(seed * 7 + i * 13) % len(files)]
        (path / f"f{i}.py").write_text(src.read_text(encoding="utf-8", errors="replace"))
    return path


# 1. a result answers only the question that was asked -----------------------------------------------------
@pytest.mark.slow
def test_changed_data_or_calibration_is_never_answered_by_an_old_result(tmp_path, smollm2):
    a, b = _code_folder(tmp_path / "a", 4, 1), _code_folder(tmp_path / "b", 4, 2)
    base = [*QUICK, f"paths.results_dir={tmp_path / 'r'}", "data=folder", "method=svd", "rank.value=40",
            "layers.indices=[0,1]"]
    ra = run(_compose([*base, f"data.path={a}"]))
    rb = run(_compose([*base, f"data.path={b}"]))  # same path layout, other data: was 'skipped', A's number
    assert ra["outcome"] == rb["outcome"] == "ran" and ra["path"] != rb["path"]
    assert ra["metrics"]["perplexity"] != rb["metrics"]["perplexity"]
    assert ra["identity"]["inputs"]["data"]["validation"] != rb["identity"]["inputs"]["data"]["validation"]
    # operational keys (where files go, loggers, labels) do not change the identity: the result is reused
    again = run(_compose([*base, f"data.path={a}", "logger=none", "experiment_name=adhoc"]))
    assert again["outcome"] == "skipped" and again["path"] == ra["path"]
    lord = [*QUICK, f"paths.results_dir={tmp_path / 'r'}", "method=lord", "rank.value=40", "layers.indices=[0,1]",
            "calibration.n_windows=2"]
    r2 = run(_compose(lord))
    r3 = run(_compose([*lord[:-1], "calibration.n_windows=3"]))  # was 'skipped' with the 2-window number
    assert r3["outcome"] == "ran" and r3["path"] != r2["path"]
    assert r3["metrics"]["perplexity"] != r2["metrics"]["perplexity"]
    stored = json.loads(Path(r3["path"]).read_text())
    assert stored["identity"]["id"].startswith(Path(r3["path"]).stem.split("-")[-1])
    assert stored["identity"]["inputs"]["config"]["calibration"]["n_windows"] == 3


def test_identity_keeps_number_changing_keys_and_drops_operational_ones():
    from lord.identity import numeric_config, run_identity

    cfg = {"calibration": {"reuse_bases": True}, "paths": {"results_dir": "x"}, "logger": {"name": "wandb"},
           "experiment_name": "a", "budget": {"seq_len": 128}, "data": {"seq_len": 128}}
    assert set(numeric_config(cfg)) == {"calibration", "data"}
    a = run_identity(cfg, "w", {})["id"]
    assert run_identity({**cfg, "paths": {"results_dir": "y"}, "experiment_name": "b"}, "w", {})["id"] == a
    assert run_identity({**cfg, "calibration": {"reuse_bases": False}}, "w", {})["id"] != a
    assert run_identity(cfg, "other weights", {})["id"] != a
    assert run_identity(cfg, "w", {"validation": "other data"})["id"] != a


def test_an_added_key_at_its_default_leaves_finished_runs_their_identity():
    from lord.identity import run_identity

    before = {"calibration": {"reuse_bases": True, "n_windows": 16}, "data": {"seq_len": 128}}
    a = run_identity(before, "w", {})["id"]
    with_default = {**before, "calibration": {**before["calibration"], "skip_first": 0}}
    assert run_identity(with_default, "w", {})["id"] == a
    assert with_default["calibration"]["skip_first"] == 0  # the input is not changed
    assert run_identity({**before, "calibration": {**before["calibration"], "skip_first": 1}}, "w", {})["id"] != a


def test_published_humaneval_results_keep_their_identity_under_todays_eval_configs():
    """Sharing prefills and the automatic width only change speed (and float rounding): every published HumanEval
    result that records an identity gets the same one from its stored config completed by today's eval config
    (keys added since are ADDED_KEYS at the value the config sets); table1_humaneval predates identities."""
    from omegaconf import OmegaConf

    from lord.identity import ADDED_KEYS, numeric_config, run_identity

    paths = sorted((ROOT / "results" / "published").rglob("*.humaneval-*.json"))
    stored = [r for r in map(json.loads, (p.read_text() for p in paths)) if r.get("identity")]
    presets = {r["config"]["eval"]["preset"] for r in stored}
    assert presets <= {"greedy", "code_eval"}
    assert sum("share_prefix" not in r["config"]["eval"] for r in stored) >= 10  # results from before sharing
    today = {p: OmegaConf.to_container(_compose([*QUICK, f"eval=humaneval_{p}"]).eval, resolve=True) for p in presets}
    for r in stored:
        inputs, old_eval = r["identity"]["inputs"], r["config"]["eval"]
        assert run_identity(r["config"], inputs["weights"], inputs["data"])["id"] == r["identity"]["id"]
        current = today[old_eval["preset"]]
        added = {k: current[k] for k in current if k not in old_eval}
        assert added == {k: ADDED_KEYS[f"eval.{k}"] for k in added}
        assert added == ({"share_prefix": True} if "share_prefix" not in old_eval else {})
        now = {**r["config"], "eval": {**old_eval, **added}}
        assert run_identity(now, inputs["weights"], inputs["data"])["id"] == r["identity"]["id"]
    # a sampled run: the width is the word auto whatever the machine measures; sharing off is another question
    sampled = OmegaConf.to_container(_compose([*QUICK, "eval=humaneval_code_eval"]), resolve=True)
    assert numeric_config(sampled)["eval"]["batch_size"] == "auto" and "share_prefix" not in numeric_config(
        sampled)["eval"]
    unshared = {**sampled, "eval": {**sampled["eval"], "share_prefix": False}}
    assert run_identity(unshared, "w", {})["id"] != run_identity(sampled, "w", {})["id"]


# 2 and 3. a failed run says so; config errors fail in one line before any weights load -------------------
BAD = [
    (["rank.value=150"], "rank: rank reduction must be in [0, 100)"),
    (["rank.value=-5"], "rank: rank reduction must be in [0, 100)"),
    (["rank.value=abc"], "rank value must be a finite number"),
    (["layers.kinds=[mlp_dwn]"], "layers.kinds has unknown kind(s) ['mlp_dwn']"),
    (["layers.indices=[99]"], "layer indices [99] out of range: the model has blocks 0..29"),
    (["calibration.mode=foo"], "calibration.mode='foo' is unknown; allowed: oneshot, sequential"),
    (["data=folder"], "missing required value(s): data.path"),
    (["data=folder", "data.path=/no/such/folder"], "corpus path /no/such/folder does not exist"),
    (["calibration.n_windows=0"], "calibration.n_windows=0 must be a positive integer"),
    (["calibration.skip_first=-1"], "calibration.skip_first=-1 must be a non-negative integer"),
    (["calibration.skip_first=128"], "calibration.skip_first=128 leaves no position of a 128-token window"),
    (["budget.seq_len=1"], "data.seq_len=1 (budget.seq_len) must be an integer >= 2"),
    (["eval=humaneval_greedy", "eval.task_ids=[HumanEval/999]"], "unknown HumanEval task(s) ['HumanEval/999']"),
    (["eval=humaneval_code_eval", "eval.batch_size=wide"], "eval.batch_size='wide' must be a positive integer"),
    (["eval=humaneval_code_eval", "eval.share_prefix=maybe"], "eval.share_prefix='maybe' must be true or false"),
    (["layers=mlp_down", "rank.value=10"], "adds parameters (parity rank 418); lower the rank or set force=true"),
    (["paths.results_dir=/proc/version/results"], "is not writable"),
    (["calibration.draw=-1"], "calibration.draw=-1 must be null (the first n_windows windows) or a seed >= 0"),
]


@pytest.mark.parametrize("overrides,message", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_config_errors_write_nothing_and_load_no_weights(overrides, message, tmp_path, monkeypatch):
    import experiments.run as run_mod

    monkeypatch.setattr(run_mod, "load_model", lambda *a, **k: pytest.fail("weights were loaded"))
    results = [f"paths.results_dir={tmp_path / 'r'}"] if not any(o.startswith("paths.") for o in overrides) else []
    t = time.perf_counter()
    with pytest.raises(LordError) as e:
        run(_compose([*QUICK, *results, *overrides]))
    assert message in str(e.value) and "\n" not in str(e.value)
    assert time.perf_counter() - t < 10
    assert not list(tmp_path.rglob("*.json"))


def test_short_folder_files_are_refused_before_loading(tmp_path, monkeypatch):
    import experiments.run as run_mod

    monkeypatch.setattr(run_mod, "load_model", lambda *a, **k: pytest.fail("weights were loaded"))
    short = tmp_path / "short"
    short.mkdir()
    (short / "a.py").write_text("x = 1\n")
    with pytest.raises(LordError, match="no file of the calibration corpus .* has the 1024 characters one window"):
        run(_compose([*QUICK, f"paths.results_dir={tmp_path}", "data=folder", f"data.path={short}"]))


def test_an_unfetched_zoo_model_is_checked_from_its_shipped_config(tmp_path, monkeypatch):
    from lord import zoo

    monkeypatch.setattr(zoo, "fetch", lambda *a, **k: pytest.fail("the model was fetched for a config check"))
    with pytest.raises(LordError, match="adds parameters"):
        run(_compose(["model=qwen2.5-coder-1.5b", "profile=quick", f"paths.results_dir={tmp_path}",
                      f"paths.cache_dir={tmp_path / 'empty-cache'}", "rank.value=10"]))


def _cli(args, env=None, **kw):
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "HYDRA_FULL_ERROR": "0", **(env or {})}, **kw)


@pytest.mark.slow
def test_exit_codes_of_a_single_run(tmp_path, smollm2):
    p = _cli(["experiments.run", *QUICK, f"paths.results_dir={tmp_path}", "layers.indices=[99]"])
    assert p.returncode == 2
    assert p.stderr.strip() == "error: layer indices [99] out of range: the model has blocks 0..29"
    assert not list(tmp_path.rglob("*.json"))
    # files long enough in characters but not in tokens: found only once the tokenizer runs -> a failed run
    corpus = tmp_path / "c"
    corpus.mkdir()
    (corpus / "a.py").write_text("#" * 1100)  # a rule of 1,100 characters is 17 tokens for this tokenizer
    p = _cli(["experiments.run", *QUICK, f"paths.results_dir={tmp_path}", "data=folder", f"data.path={corpus}",
              "eval.n_windows=1", "method=svd", "rank.value=40"])
    assert p.returncode == 1, p.stderr[-1500:]
    failed = [json.loads(f.read_text()) for f in tmp_path.rglob("*.json")]
    assert len(failed) == 1 and failed[0]["status"] == "failed" and "filtered out" in failed[0]["error"]


# 4. caches and stored weights are checked by content, and recover -----------------------------------------
@pytest.mark.slow
def test_a_same_size_corrupted_zoo_model_is_detected_and_rebuilt(tmp_path, smollm2, caplog):
    import shutil

    from lord import zoo

    src = zoo.model_dir("smollm2-135m").parent  # the GGUF and the converted model
    root = tmp_path / "cache"
    shutil.copytree(src, root / "zoo" / "smollm2-135m")
    weights = zoo.model_dir("smollm2-135m", root) / "model.safetensors"
    size = weights.stat().st_size
    with open(weights, "r+b") as f:  # flip bytes in the middle of the tensors: same size, other numbers
        f.seek(size // 2)
        chunk = f.read(4096)
        f.seek(size // 2)
        f.write(bytes(b ^ 0xFF for b in chunk))
    assert weights.stat().st_size == size
    assert zoo._marker_valid(weights.parent) is None  # the earlier check (sizes only) passed this file
    zoo.fetch("smollm2-135m", root)  # rebuilt from the cached GGUF
    assert "differs from" in caplog.text and zoo._marker_valid(weights.parent) is not None


def test_a_corrupt_statistics_cache_file_is_replaced_with_a_warning(tmp_path, caplog):
    from lord.cache import CompressionCache
    from lord.compress import Compressor

    from conftest import calib_batches

    model, cache = tiny_model("llama"), CompressionCache(tmp_path, "tiny")
    first = Compressor(model, ["mlp_down"], batches=calib_batches(), cache=cache, progress=False).statistics
    (stats_file,) = (tmp_path / "stats").glob("*.safetensors")
    stats_file.write_bytes(stats_file.read_bytes()[:100])  # truncated (a killed writer, a full disk)
    again = Compressor(model, ["mlp_down"], batches=calib_batches(), cache=cache, progress=False)
    stats = again.statistics
    assert again.events["statistics_from_cache"] is False and "recomputing it" in caplog.text
    assert all(torch.equal(stats[k].sum_vv, first[k].sum_vv) for k in first)
    assert Compressor(model, ["mlp_down"], batches=calib_batches(), cache=cache,
                      progress=False).statistics and stats_file.stat().st_size > 100


def test_leftovers_of_killed_writers_are_removed_but_never_a_live_ones(tmp_path):
    from lord.atomic import _tag, clean_leftovers, temp_dir, temp_file

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    me = _tag(".tmp-").split("-")[1]
    stale = [tmp_path / f".tmp-{me}-{dead}-abc.json", tmp_path / "stats" / f".tmp-{me}-{dead}-x.safetensors",
             tmp_path / "zoo" / "m" / f".model-{me}-{dead}-q", tmp_path / "zoo" / "m" / f".fetch-{me}-{dead}-q"]
    for p in stale:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.mkdir() if p.name.startswith((".model-", ".fetch-")) else p.write_text("half")
    old = tmp_path / "windows-x.pt.tmp"  # an earlier version's name, an hour old
    old.write_text("half")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    live_file, live_dir = Path(temp_file(tmp_path)), temp_dir(tmp_path / "zoo" / "m", ".model-")
    removed = set(clean_leftovers(tmp_path))
    assert set(stale) | {old} <= removed and live_file.exists() and live_dir.exists()


def test_malformed_corpus_files_are_named_with_the_line(tmp_path):
    from lord.corpora import folder_corpus

    bad = tmp_path / "c.jsonl"
    bad.write_text('{"content": "x = 1"}\n{"content": "y = 2",\n')
    with pytest.raises(LordError, match=r"c.jsonl:2: not valid JSON"):
        folder_corpus(bad)
    bad.write_text('{"content": "x = 1"}\n{"text": "y"}\n')
    with pytest.raises(LordError, match=r"c.jsonl:2: each line must be an object with a 'content' string"):
        folder_corpus(bad)
    pq = tmp_path / "c.parquet"
    pq.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(LordError, match=r"c.parquet is not a readable Parquet file"):
        folder_corpus(pq)


@pytest.mark.parametrize("change,message", [
    (lambda m: m.update(format_version=99), "format_version 99 is not one this lord reads"),
    (lambda m: m["decompositions"][0].pop("rank"), "decompositions[0] lacks 'rank'"),
    (lambda m: m["decompositions"][0].update(d_outs="64"), "decompositions[0].d_outs must be list of int"),
    (lambda m: m.update(decompositions={"a": 1}), "'decompositions' must be a list"),
    (lambda m: m.update(aliases=[1]), "'aliases' must map tensor names"),
])
def test_a_malformed_structure_is_refused_in_one_line(change, message, tmp_path):
    from lord.checkpoint import load_compressed, save_compressed
    from lord.compress import CompressionConfig, compress_model
    from lord.ranks import RankSpec

    model = tiny_model("llama")
    rep = compress_model(model, CompressionConfig(method="svd", kinds=["mlp_down"], rank=RankSpec("rank", 8)),
                         progress=False)
    save_compressed(model, tmp_path / "m", rep["decompositions"])
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    change(config["lord"])
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(LordError, match=message.replace("[", r"\[").replace("]", r"\]")) as e:
        load_compressed(tmp_path / "m")
    assert "\n" not in str(e.value)


def test_a_hub_id_without_network_fails_at_once(monkeypatch):
    from lord import models

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t = time.perf_counter()
    with pytest.raises(LordError, match="not in the local Hugging Face cache and the hub is switched off "
                                        r"\(HF_HUB_OFFLINE=1\); offline models you can use instead: smollm2-135m"):
        models.load_model("someone/some-model-never-downloaded")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(models, "_hub_reachable", lambda timeout_s=3.0: False)
    with pytest.raises(LordError, match="the hub is unreachable; offline models you can use instead"):
        models.load_config_only("someone/some-model-never-downloaded")
    assert time.perf_counter() - t < 5


# 5. honest statistics --------------------------------------------------------------------------------------
def test_too_few_tokens_are_reported_and_full_rank_is_exact_on_the_calibration_span_only(caplog):
    from lord.compress import Compressor
    from lord.ranks import RankSpec

    model = tiny_model("llama")  # mlp_up is 64 x 32: tall, statistics on its 32-dimensional input
    ids = torch.randint(0, 97, (1, 12), generator=torch.Generator().manual_seed(3))  # 12 tokens < 32 + 1
    probe = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(4))
    dense_cal, dense_new = model(ids).logits, model(probe).logits
    c = Compressor(model, ["mlp_up"], batches=[ids], progress=False)
    c.apply("lord_meanfix", RankSpec("reduction", 0, force=True))
    ev = c.events["rank_deficient_statistics"]
    assert ev["tokens"] == 12 and ev["max_dim"] == 32 and ev["tokens_needed"] == 33
    assert "rank-deficient (rank <= 11)" in caplog.text
    # exact on the calibration inputs (the error lies outside their span), not on new ones
    assert torch.allclose(model(ids).logits, dense_cal, atol=1e-4)
    assert not torch.allclose(model(probe).logits, dense_new, atol=1e-3)


@pytest.mark.slow
def test_the_run_records_rank_deficient_statistics(tmp_path, smollm2):
    r = run(_compose([*QUICK, f"paths.results_dir={tmp_path}", "layers=mlp_up", "layers.indices=[0,1]",
                      "rank.value=30"]))
    rec = r["compression"]["rank_deficient_statistics"]
    assert rec == {"tokens": 512, "statistics": 2, "of": 2, "max_dim": 576, "tokens_needed": 577}


# a sweep killed with kill -9 loses nothing and recomputes nothing that matched ---------------------------
@pytest.mark.slow
def test_a_sweep_killed_with_kill_9_resumes_without_losing_or_recomputing(tmp_path, smollm2):
    args = ["experiments.run", "-m", *QUICK, f"paths.results_dir={tmp_path}", "method=svd", "layers.indices=[0]",
            "rank.value=30,40,50"]
    proc = subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and not list(tmp_path.rglob("reduction-30-*.json")):
        time.sleep(0.2)
    time.sleep(1.0)  # into the second job
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = {f: f.stat().st_mtime_ns for f in tmp_path.rglob("*.json")}
    assert done and all(json.loads(f.read_text())["status"] == "ok" for f in done)  # nothing half-written
    p = _cli(args, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert f"{len(done)} skipped (already done)" in p.stderr
    assert all(f.stat().st_mtime_ns == m for f, m in done.items())  # not recomputed
    results = [json.loads(f.read_text()) for f in tmp_path.rglob("*.json")]
    assert len(results) == 3 and all(r["status"] == "ok" for r in results)
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith((".tmp-", ".model-", ".fetch-"))]


# 4. provenance: what code produced a result, and published results from committed code only ---------------
def _git_repo(path: Path) -> Path:
    def git(*a):
        subprocess.run(["git", "-C", str(path), *a], check=True, capture_output=True)
    (path / "lord").mkdir(parents=True)
    (path / "lord" / "a.py").write_text("x = 1\n")
    (path / "results").mkdir()
    git("init", "-q")
    git("-c", "user.email=t@t", "-c", "user.name=t", "add", ".")
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "c")
    return path


def test_git_state_names_and_hashes_the_uncommitted_change(tmp_path):
    from lord.environment import git_state

    repo = _git_repo(tmp_path / "repo")
    clean = git_state(repo)
    assert clean["dirty"] is False and clean["diff_sha256"] is None and len(clean["commit"]) == 40
    (repo / "results" / "r.json").write_text("{}")  # results are not code
    assert git_state(repo)["dirty"] is False
    (repo / "lord" / "a.py").write_text("x = 2\n")
    one = git_state(repo)
    assert one["dirty"] and one["changed_files"] == ["lord/a.py"] and "+x = 2" in one["diff"]
    (repo / "lord" / "a.py").write_text("x = 3\n")
    two = git_state(repo)
    assert two["diff_sha256"] != one["diff_sha256"]
    (repo / "lord" / "new.py").write_text("y = 1\n")  # an untracked module changes what runs
    three = git_state(repo)
    assert "lord/new.py" in three["changed_files"] and three["diff_sha256"] != two["diff_sha256"]
    assert git_state(tmp_path / "not-a-repo") is None


def test_a_dirty_tree_cannot_write_published_results_unless_told(tmp_path, monkeypatch):
    import experiments.records as records
    import experiments.run as run_mod

    monkeypatch.setattr(run_mod, "load_model", lambda *a, **k: pytest.fail("weights were loaded"))
    published = tmp_path / "results" / "published"
    monkeypatch.setattr(records, "PUBLISHED", published)
    dirty = {"commit": "c" * 40, "dirty": True, "changed_files": ["lord/a.py"], "diff_sha256": "d" * 64,
             "diff": "+x"}
    monkeypatch.setattr(run_mod, "git_state", lambda: dirty)
    with pytest.raises(LordError) as e:
        run(_compose([*QUICK, f"paths.results_dir={published}"]))
    assert "differs from commit cccccccccccc (1 file(s): lord/a.py)" in str(e.value) and "\n" not in str(e.value)
    assert "paths.allow_dirty=true" in str(e.value) and not list(tmp_path.rglob("*.json"))
    # elsewhere a dirty tree runs (and records what it was); a clean tree may publish
    records.check_provenance(_compose([*QUICK, f"paths.results_dir={tmp_path / 'results'}"]), dirty)
    records.check_provenance(_compose([*QUICK, f"paths.results_dir={published}"]), {**dirty, "dirty": False})
    records.check_provenance(_compose([*QUICK, f"paths.results_dir={published}", "paths.allow_dirty=true"]), dirty)


@pytest.mark.slow
def test_a_result_records_its_provenance_and_a_draw_is_a_new_run(tmp_path, smollm2):
    """A dirty run elsewhere records the change's hash; calibration.draw (an added key) leaves the default
    selection's identity alone and names its own folder."""
    base = [*QUICK, "method=lord", "rank.value=50", f"paths.results_dir={tmp_path}", "eval.n_windows=2"]
    r0 = run(_compose(base))
    git = r0["environment"]["git"]
    assert set(git) >= {"commit", "dirty", "changed_files", "diff_sha256"}
    assert r0["environment"]["git_commit"] == git["commit"] + ("-dirty" if git["dirty"] else "")
    assert len(r0["metrics"]["window_nll"]) == 2 == len(r0["metrics"]["dense_window_nll"])
    cfg = r0["identity"]["inputs"]["config"]
    assert "draw" not in cfg["calibration"]  # the default is left out of the identity
    r1 = run(_compose([*base, "calibration.draw=1"]))
    assert r1["identity"]["id"] != r0["identity"]["id"] and "lord-draw1" in r1["path"]
    assert r1["data"]["calibration_draw"] == 1
    assert r1["metrics"]["perplexity"] != r0["metrics"]["perplexity"]

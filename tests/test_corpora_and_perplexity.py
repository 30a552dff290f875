import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from conftest import VOCAB, tiny_model
from lord.corpora import (Corpus, batches, folder_corpus, stdlib_corpus, take_windows, the_stack_calibration,
                          the_stack_smol, tokenize_windows)
from lord.errors import LordError
from lord.perplexity import evaluate_perplexity


class CharTokenizer:
    """A deterministic stand-in tokenizer: one token per character (ids modulo the tiny vocab)."""

    def __call__(self, text):
        class Out:
            pass

        o = Out()
        o.input_ids = [ord(c) % VOCAB for c in text]
        return o

    def get_vocab(self):
        return {chr(i): i for i in range(VOCAB)}


def test_stdlib_splits_are_disjoint_deterministic_and_hashed():
    cal, val = stdlib_corpus("calibration"), stdlib_corpus("validation")
    cal_paths, val_paths = {r["path"] for r in cal.records}, {r["path"] for r in val.records}
    assert cal_paths and val_paths and not cal_paths & val_paths
    assert not any("/test" in p or p.startswith("test/") or "/tests/" in p for p in cal_paths | val_paths)
    assert stdlib_corpus("validation").content_hash == val.content_hash
    d = val.describe()
    assert d["python_version"] and len(d["content_sha256"]) == 64
    assert set(val.records[0]) >= {"content", "repository_name", "path", "size", "lang"}


@pytest.mark.slow
def test_a_copied_stdlib_root_gives_the_same_splits_and_hashes_and_a_wrong_one_is_named(tmp_path):
    """data.stdlib_root: a copy of the interpreter's Lib read from elsewhere (as on a machine with another Python)
    is the same corpus to the byte; a folder that is no CPython Lib is one clear error, before anything loads."""
    import shutil
    import sysconfig
    from pathlib import Path

    from omegaconf import OmegaConf

    from lord.run_context import RunData

    live = Path(sysconfig.get_paths()["stdlib"])
    copy = tmp_path / "Lib"
    shutil.copytree(live, copy, ignore=shutil.ignore_patterns("__pycache__", "site-packages", "test", "idle_test"))
    for split in ("calibration", "validation"):
        mine, theirs = stdlib_corpus(split), stdlib_corpus(split, root=str(copy))
        assert theirs.content_hash == mine.content_hash and len(theirs.records) == len(mine.records)
        assert theirs.describe()["stdlib_root"] == str(copy) and "python_version" not in theirs.describe()
    cfg = OmegaConf.create({"data": {"name": "stdlib", "validation_percent": 50, "seq_len": 64, "min_chars": 2000,
                                     "all_windows": False, "stdlib_root": str(tmp_path)},
                            "calibration": {"n_windows": 3}, "eval": {"n_windows": 2},
                            "paths": {"cache_dir": str(tmp_path)}})
    with pytest.raises(LordError, match=r"data.stdlib_root=.* is not a CPython Lib folder \(no os.py in it\)"):
        RunData(cfg, CharTokenizer()).check_split("validation", 2)


@pytest.mark.slow
def test_the_test_suite_corpus_is_disjoint_from_both_stdlib_splits_and_run_data_reads_it(tmp_path):
    """data.calibration_corpus=stdlib-tests: CPython's Lib/test as calibration, never in either stdlib split;
    calibration.seq_len cuts calibration windows of its own length while validation keeps data.seq_len."""
    from omegaconf import OmegaConf

    from lord.corpora import stdlib_tests_corpus
    from lord.run_context import RunData

    tests = stdlib_tests_corpus()
    paths = {r["path"] for r in tests.records}
    assert len(paths) > 100 and all(p.startswith("test/") for p in paths)
    stdlib = {f"{r['path']}" for split in ("calibration", "validation") for r in stdlib_corpus(split).records}
    contents = {r["content"] for split in ("calibration", "validation") for r in stdlib_corpus(split).records}
    assert not paths & stdlib and not {r["content"] for r in tests.records if len(r["content"]) > 1000} & contents
    cfg = OmegaConf.create({"data": {"name": "stdlib", "validation_percent": 50, "seq_len": 64, "min_chars": 2000,
                                     "all_windows": False, "calibration_corpus": "stdlib-tests"},
                            "calibration": {"n_windows": 3, "seq_len": 32}, "eval": {"n_windows": 2},
                            "paths": {"cache_dir": str(tmp_path)}})
    data = RunData(cfg, CharTokenizer())
    assert data.windows("calibration").shape == (3, 32) and data.windows("validation").shape == (2, 64)
    assert data.describe()["calibration"]["content_sha256"] == tests.content_hash
    assert data.describe()["calibration_seq_len"] == 32


def test_windows_follow_the_papers_filters(tmp_path):
    recs = [{"content": "a" * n, "repository_name": "r", "path": f"f{n}.py", "size": n, "lang": "Python"}
            for n in (50, 300, 700)]
    corpus = Corpus("t", "validation", recs)
    w = tokenize_windows(corpus, CharTokenizer(), seq_len=100, min_chars=200)
    assert w.shape == (2, 100)  # the 50-char file is dropped, one window per kept file
    w_all = tokenize_windows(corpus, CharTokenizer(), seq_len=100, min_chars=200, all_windows=True)
    assert w_all.shape == (10, 100)  # 3 + 7 non-overlapping windows
    with pytest.raises(LordError, match="every file of t/validation .* was filtered out"):
        tokenize_windows(corpus, CharTokenizer(), seq_len=1000, min_chars=200)
    cached = tokenize_windows(corpus, CharTokenizer(), seq_len=100, min_chars=200, cache_dir=tmp_path)
    assert list(tmp_path.glob("windows-*.pt")) and torch.equal(cached, w)
    assert torch.equal(tokenize_windows(corpus, CharTokenizer(), seq_len=100, min_chars=200, cache_dir=tmp_path), w)
    with pytest.raises(LordError, match="asked for 5 windows but the corpus yields only 2"):
        take_windows(w, 5)
    assert [b.shape[0] for b in batches(w_all, 4)] == [4, 4, 2]


def test_user_corpora(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.py").write_text("print(1)\n")
    assert folder_corpus(tmp_path / "src").records[0]["path"] == "a.py"
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(LordError, match="contains no .py files"):
        folder_corpus(tmp_path / "empty")
    pd.DataFrame({"content": ["x = 1\n", "y = 2\n"], "path": ["x.py", "y.py"]}).to_json(
        tmp_path / "c.jsonl", orient="records", lines=True)
    assert len(folder_corpus(tmp_path / "c.jsonl").records) == 2
    pd.DataFrame({"text": ["x"]}).to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(LordError, match="no 'content' column"):
        folder_corpus(tmp_path / "bad.parquet")


def _stack_fixture(root, contents):
    (root / "data" / "python").mkdir(parents=True)
    pd.DataFrame({"content": contents, "repository_name": ["r"] * len(contents),
                  "path": [f"p{i}.py" for i in range(len(contents))], "size": [len(c) for c in contents],
                  "lang": ["Python"] * len(contents)}).to_parquet(root / "data" / "python" / "train.parquet")
    return str(root)


def test_the_stack_paths_on_local_fixtures(tmp_path):
    """The real datasets calls, pointed at local folders with the Stack's schema."""
    smol = the_stack_smol(_stack_fixture(tmp_path / "smol", ["a" * 20, "b" * 20]))
    assert smol.split == "validation" and len(smol.records) == 2
    big = _stack_fixture(tmp_path / "stack", ["a" * 20, "c" * 20, "d" * 5, "e" * 30])
    cal = the_stack_calibration(smol, n_files=10, min_chars=10, source=big)
    assert sorted(r["content"][0] for r in cal.records) == ["c", "e"]  # 'a' is a validation file, 'd' too short
    assert the_stack_calibration(smol, n_files=1, min_chars=10, source=big).records[0]["content"][0] == "c"


def test_perplexity_matches_a_straightforward_computation():
    model = tiny_model("llama")
    g = torch.Generator().manual_seed(0)
    windows = torch.randint(0, VOCAB, (5, 24), generator=g)
    got = evaluate_perplexity(model, windows, batch_size=2, chunk_tokens=7, progress=False)
    with torch.no_grad():
        logits = model(windows).logits[:, :-1]
    nll = F.cross_entropy(logits.reshape(-1, VOCAB).double(), windows[:, 1:].reshape(-1), reduction="sum").item()
    n = 5 * 23
    assert got["n_tokens"] == n
    assert math.isclose(got["nll_sum"], nll, rel_tol=1e-5)
    assert math.isclose(got["perplexity"], math.exp(nll / n), rel_tol=1e-5)
    # corpus-level, not the mean of per-window perplexities
    per_window = [math.exp(F.cross_entropy(logits[i], windows[i, 1:]).item()) for i in range(5)]
    assert not math.isclose(got["perplexity"], sum(per_window) / 5, rel_tol=1e-6)


def test_per_window_and_per_block_nll_are_the_tokens_own():
    """Each window's NLL is its own tokens' (not a share of the batch's), and its blocks partition it: what the
    paired bootstrap of analysis.intervals resamples."""
    model = tiny_model("llama")
    windows = torch.randint(0, VOCAB, (5, 24), generator=torch.Generator().manual_seed(0))
    got = evaluate_perplexity(model, windows, batch_size=2, chunk_tokens=7, progress=False, block_tokens=10)
    with torch.no_grad():
        token_nll = F.cross_entropy(model(windows).logits[:, :-1].transpose(1, 2).double(), windows[:, 1:],
                                    reduction="none")  # (5, 23)
    assert len(got["window_nll"]) == 5 and got["block_tokens"] == 10
    for i in range(5):
        assert math.isclose(got["window_nll"][i], token_nll[i].sum().item(), rel_tol=1e-5)
        blocks = got["block_nll"][i]
        assert len(blocks) == 3  # 23 predicted tokens in blocks of 10: 10, 10, 3
        assert math.isclose(blocks[2], token_nll[i, 20:].sum().item(), rel_tol=1e-5)
        assert math.isclose(sum(blocks), got["window_nll"][i], rel_tol=1e-9)
    assert math.isclose(sum(got["window_nll"]), got["nll_sum"], rel_tol=1e-6)


def test_calibration_draws_are_seeded_and_distinct():
    from lord.corpora import draw_windows

    pool = torch.arange(40).view(20, 2)
    a, b, c = (draw_windows(pool, 6, s) for s in (1, 1, 2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert len(set(a[:, 0].tolist())) == 6  # without replacement
    with pytest.raises(LordError, match="asked for 21"):
        draw_windows(pool, 21, 0)


@pytest.mark.parametrize("arch", ["gpt2", "codegen", "gpt_bigcode", "qwen2"])
def test_perplexity_uses_the_models_own_head(arch):
    """Covers heads with a bias (CodeGen) and tied heads (GPT-2)."""
    model = tiny_model(arch)
    windows = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(1))
    got = evaluate_perplexity(model, windows, batch_size=1, chunk_tokens=5, progress=False)
    with torch.no_grad():
        loss = model(windows, labels=windows).loss.item()
    assert math.isclose(got["perplexity"], math.exp(loss), rel_tol=1e-5)

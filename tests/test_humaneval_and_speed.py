"""HumanEval harness (estimator, presets, resumable generation) and the speed/size evaluator; the sandbox is
tested in test_sandbox.py."""

import copy
import json
import math

import pytest

from conftest import tiny_model
from lord.compress import CompressionConfig, compress_model
from lord.errors import LordError
from lord.humaneval.evaluate import evaluate_humaneval
from lord.humaneval.generate import PRESETS, get_preset, truncate
from lord.humaneval.passk import pass_at_k, summarise, summarise_seeds
from lord.humaneval.sandbox import judge_completion
from lord.ranks import RankSpec
from lord import speed


def test_pass_at_k_matches_the_combinatorial_definition():
    for n, c, k in [(10, 3, 1), (10, 3, 5), (10, 0, 10), (10, 10, 1), (20, 7, 10)]:
        exact = 1 - math.comb(n - c, k) / math.comb(n, k)
        assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12)
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    with pytest.raises(LordError, match="pass@10 needs at least 10 samples"):
        pass_at_k(5, 1, 10)


def test_bootstrap_interval_brackets_the_estimate():
    counts = {f"t{i}": (10, i % 11) for i in range(40)}
    s = summarise(counts, ks=(1, 10))
    for k in ("pass@1", "pass@10"):
        assert s[k]["ci_low"] <= s[k]["value"] <= s[k]["ci_high"]
    assert "pass@100" not in summarise(counts, ks=(100,))  # only k <= n


def test_pass_at_k_over_seeds_is_the_seeds_mean_with_an_interval_over_tasks():
    one = {f"t{i}": (10, i % 11) for i in range(40)}
    other = {f"t{i}": (10, (3 * i) % 11) for i in range(40)}
    assert summarise_seeds([one]) == {k: v | {"seeds": 1} for k, v in summarise(one).items()}
    # the same samples twice: the same per-task scores, so the same value and, resampling tasks, the same interval
    same = summarise_seeds([one, one])
    assert all(same[k][q] == pytest.approx(summarise(one)[k][q]) for k in same for q in ("value", "ci_low", "ci_high"))
    both = summarise_seeds([one, other], n_boot=500, seed=3)
    # by hand: resample tasks, each with both seeds (the mean over seeds of its per-task estimate)
    import numpy as np

    tasks = sorted(one)
    idx = np.random.default_rng(3).integers(0, len(tasks), size=(500, len(tasks)))
    per_task = np.array([(pass_at_k(*one[t], 10) + pass_at_k(*other[t], 10)) / 2 for t in tasks])
    lo, hi = np.quantile(per_task[idx].mean(axis=1), [0.025, 0.975])
    assert (both["pass@10"]["ci_low"], both["pass@10"]["ci_high"]) == (pytest.approx(100 * lo), pytest.approx(100 * hi))
    for k in ("pass@1", "pass@10"):
        assert both[k]["value"] == pytest.approx((summarise(one)[k]["value"] + summarise(other)[k]["value"]) / 2)
        assert both[k]["ci_low"] <= both[k]["value"] <= both[k]["ci_high"]
    with pytest.raises(LordError, match="same tasks in every seed"):
        summarise_seeds([one, {"t0": (10, 1)}])


def test_presets_truncate_as_their_harness_does():
    text = "    x = 1\n    return x\n\n\ndef other():\n    pass\n"
    assert truncate(text, PRESETS["code_eval"]) == "    x = 1\n    return x"
    assert truncate(text, PRESETS["bigcode"]) == "    x = 1\n    return x\n\n"
    assert truncate("    a = 1\n\n    return a\nprint(3)", PRESETS["greedy"]) == "    a = 1\n\n    return a\n"
    assert truncate("    return 1\n\nThis function returns one.", PRESETS["greedy"]) == "    return 1\n"
    assert truncate("    return 1\n```\n", PRESETS["greedy"]) == "    return 1\n"
    assert get_preset("code_eval").n == 10 and get_preset("greedy", n=3).n == 3
    with pytest.raises(LordError, match="unknown HumanEval preset"):
        get_preset("best")


def test_chat_replies_become_completions_of_the_raw_prompt():
    from lord.humaneval.generate import completion_from_chat

    problem = {"prompt": "def add(a, b):\n    \"\"\"Sum.\"\"\"\n", "entry_point": "add",
               "test": "def check(f):\n    assert f(2, 3) == 5\n", "canonical_solution": "    return a + b\n"}
    whole = "Sure!\n```python\ndef add(a, b):\n\treturn a + b\n```\nDone."
    body = "```python\n    return a + b\n```"
    unclosed = "```python\ndef add(a, b):\n    return a + b\n"
    for reply in (whole, body, unclosed):
        assert judge_completion(problem, completion_from_chat(reply, problem))["passed"], reply
    assert not judge_completion(problem, completion_from_chat("I cannot help.", problem))["passed"]


@pytest.fixture(scope="module")
def tiny_with_real_tokenizer(smollm2):
    _, tok, _ = smollm2
    model = tiny_model("llama", vocab_size=len(tok), hidden_size=32, intermediate_size=64)
    return model, copy.deepcopy(tok)


@pytest.mark.slow
def test_generation_writes_as_it_goes_and_resumes(tmp_path, tiny_with_real_tokenizer):
    model, tok = tiny_with_real_tokenizer
    kw = dict(preset="greedy", limit=3, max_new_tokens=8, batch_size=2, progress=False)
    r1 = evaluate_humaneval(model, tok, tmp_path, **kw)
    samples = tmp_path / "samples-greedy-seed0.jsonl"
    lines = samples.read_text().splitlines()
    assert len(lines) == 3 and r1["n_tasks"] == 3 and 0 <= r1["pass@1"]["mean"] <= 100
    # an interrupted run: drop one sample and cut another line in half; the rerun completes it
    samples.write_text(lines[0] + "\n" + lines[1][:10])
    (tmp_path / "results-greedy-seed0.jsonl").unlink()
    r2 = evaluate_humaneval(model, tok, tmp_path, **kw)
    assert len(samples.read_text().splitlines()) == 3
    assert r2["pass@1"]["mean"] == r1["pass@1"]["mean"]
    # sampling presets: several seeds give mean and spread
    r3 = evaluate_humaneval(model, tok, tmp_path, preset="code_eval", n=2, limit=2, seeds=(0, 1), max_new_tokens=4,
                            batch_size=4, progress=False)
    assert len(r3["per_seed"]) == 2 and "pass@1" in r3 and "pass@10" not in r3


@pytest.mark.slow
def test_greedy_humaneval_on_the_real_model(tmp_path, smollm2):
    model, tok, _ = smollm2
    r = evaluate_humaneval(model, tok, tmp_path, preset="greedy", task_ids=["HumanEval/0", "HumanEval/2",
                           "HumanEval/4", "HumanEval/7"], max_new_tokens=96, batch_size=4, progress=False)
    samples = [json.loads(line) for line in (tmp_path / "samples-greedy-seed0.jsonl").read_text().splitlines()]
    outcomes = [json.loads(line) for line in (tmp_path / "results-greedy-seed0.jsonl").read_text().splitlines()]
    assert len(samples) == 4 and any(s["raw"].strip() for s in samples)  # a 135M model may still miss some
    assert sorted(o["task_id"] for o in outcomes) == sorted(s["task_id"] for s in samples)
    assert all(r["per_seed"][0]["per_task"][t]["n"] == 1 for t in r["per_seed"][0]["per_task"])
    assert 0 <= r["pass@1"]["mean"] <= 100 and r["pass@1"]["ci_low"] <= r["pass@1"]["mean"]


@pytest.mark.slow
def test_speed_and_size_on_a_tiny_model():
    dense = tiny_model("llama", hidden_size=64, intermediate_size=256, num_hidden_layers=2)
    comp = copy.deepcopy(dense)
    rep = compress_model(comp, CompressionConfig(method="svd", kinds=["mlp_down", "mlp_up", "mlp_gate"],
                                                 rank=RankSpec("rank", 16)), progress=False)
    d = speed.measure(dense, seq_lens=(32, 64), warmup=1, runs=3, decode_tokens=8)
    c = speed.measure(comp, seq_lens=(32, 64), warmup=1, runs=3, decode_tokens=8,
                      decompositions=rep["decompositions"])
    rel = speed.relative(d, c)
    assert c["n_params"] < d["n_params"] and c["bytes_on_disk"] < d["bytes_on_disk"]
    saved = 3 * 2 * (64 * 256 - 16 * (64 + 256))  # closed form: 3 MLP matrices x 2 blocks
    assert d["n_params"] - c["n_params"] == saved
    assert d["bytes_in_memory"] - c["bytes_in_memory"] == 4 * saved
    for row in rel["forward"]:
        assert row["flops_bound"] > 1 and row["speedup"] > 0
        assert row["fraction_of_bound"] == pytest.approx(row["speedup"] / row["flops_bound"])
    assert rel["decode"]["bytes_bound"] == pytest.approx(d["decode_bytes_per_token"] / c["decode_bytes_per_token"])
    assert d["decode"]["new_tokens"] == 8 and len(d["forward"][0]["runs"]) == 3

"""Continuous batching of HumanEval generation: rows leave and join the batch, yet each row's tokens are what it
would get alone (greedy: until the first near-tie of its top two logits; sampling: its own random stream)."""

import json

import pytest
import torch

from lord.humaneval.batching import Request, generate_continuous, sample_seed
from lord.humaneval.evaluate import load_problems
from lord.humaneval.generate import generate_samples, get_preset

# batched float32 logits differ from unbatched ones by ~1e-6; below this top-2 gap a flip is rounding, not a bug
NEAR_TIE = 1e-3


@pytest.mark.slow
def test_continuous_greedy_equals_unbatched_greedy_until_the_first_near_tie(smollm2):
    model, tok, _ = smollm2
    problems = dict(list(load_problems().items())[:8])
    prompts = {t: tok(p["prompt"]).input_ids for t, p in problems.items()}
    length = {t: 6 + 7 * (k % 5) for k, t in enumerate(problems)}  # rows finish at different steps

    def run(max_rows):
        out = {}
        stats = generate_continuous(model, [Request((t, 0), prompts[t], 0) for t in problems], max_rows=max_rows,
                                    max_new_tokens=64, is_done=lambda r: len(r.out) >= length[r.request.key[0]],
                                    on_finished=lambda r: out.__setitem__(r.request.key[0], (r.out, r.margins)),
                                    record_margins=True)
        return out, stats

    alone, _ = run(1)
    batched, stats = run(3)
    assert stats.max_rows == 3 and stats.cache_padding > 0  # rows of different lengths really shared a batch
    for t in problems:
        tokens, margins = alone[t]
        assert len(tokens) == length[t]
        tie = next((i for i, m in enumerate(margins) if m < NEAR_TIE), len(tokens))
        assert batched[t][0][:tie + 1] == tokens[:tie + 1], t
    first = next(iter(problems))  # and one row alone is what transformers' generate() gives
    ref = model.generate(torch.tensor([prompts[first]]), max_new_tokens=length[first], min_new_tokens=length[first],
                         do_sample=False)
    assert ref[0, len(prompts[first]):].tolist()[:len(alone[first][0])] == alone[first][0]


@pytest.mark.slow
def test_a_sampled_run_killed_and_resumed_writes_the_samples_of_an_uninterrupted_one(tmp_path, smollm2):
    from transformers import AutoConfig

    from lord.models import random_model

    _, tok, _ = smollm2
    tiny = random_model(AutoConfig.for_model("llama", hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                             num_key_value_heads=2, intermediate_size=64, vocab_size=len(tok)))
    problems = dict(list(load_problems().items())[:4])
    preset = get_preset("code_eval", n=3, max_new_tokens=10)
    full, resumed = tmp_path / "full.jsonl", tmp_path / "resumed.jsonl"
    generate_samples(tiny, tok, problems, preset, full, seed=5, batch_size=4, progress=False)
    lines = full.read_text().splitlines()
    resumed.write_text("\n".join(lines[:5]) + "\n" + lines[5][:17])  # killed while writing the sixth
    stats = {}
    generate_samples(tiny, tok, problems, preset, resumed, seed=5, batch_size=4, progress=False, stats=stats)
    assert stats["mode"] == "continuous"

    def by_key(path):
        return {(s["task_id"], s["sample"]): s["raw"] for s in map(json.loads, path.read_text().splitlines())}

    assert len(by_key(full)) == 12 and by_key(resumed) == by_key(full)
    assert len(set(by_key(full).values())) > 6  # samples of one prompt differ: each has its own stream
    other = tmp_path / "other-seed.jsonl"
    generate_samples(tiny, tok, problems, preset, other, seed=6, batch_size=4, progress=False)
    assert by_key(other) != by_key(full)


def test_sample_seeds_are_stable_and_distinct():
    assert sample_seed(0, "HumanEval/0", 0) == sample_seed(0, "HumanEval/0", 0)
    seeds = {sample_seed(s, f"HumanEval/{t}", i) for s in range(3) for t in range(20) for i in range(10)}
    assert len(seeds) == 600 and all(0 <= x < 2**63 for x in seeds)


def test_each_sample_records_why_its_generation_ended(tmp_path, smollm2):
    """``stop``: ``eos`` when the model emitted its end-of-text token, ``rule`` when the preset's stop rule
    fired, ``cap`` when neither did before max_new_tokens (analysis.humaneval_failures reads it)."""
    import torch
    from transformers import AutoConfig

    from lord.humaneval.generate import _done
    from lord.models import random_model

    _, tok, _ = smollm2
    config = AutoConfig.for_model("llama", hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2, intermediate_size=64, vocab_size=len(tok))
    problems = dict(list(load_problems().items())[:3])
    preset = get_preset("greedy", max_new_tokens=8)

    tiny = random_model(config)
    free = tmp_path / "free.jsonl"
    generate_samples(tiny, tok, problems, preset, free, batch_size=2, progress=False)
    for s in map(json.loads, free.read_text().splitlines()):
        assert s["stop"] in ("rule", "cap") and (s["stop"] == "rule") == _done(s["raw"], preset)

    mute = random_model(config)
    with torch.no_grad():
        mute.lm_head.weight.zero_()  # equal logits: greedy picks token 0 at every step
    mute.generation_config.eos_token_id = 0
    ended = tmp_path / "ended.jsonl"
    generate_samples(mute, tok, problems, preset, ended, batch_size=2, progress=False)
    assert [json.loads(line)["stop"] for line in ended.read_text().splitlines()] == ["eos"] * 3


# prefix sharing: the n samples of a task share one prefill ---------------------------------------------------
def _tiny_float64(vocab: int, logit_scale: float = 1.0):
    """A tiny random llama in float64; ``logit_scale`` sharpens its next-token distribution (x20: a nucleus of a
    few tokens at T = 0.2, like a trained model's, where x1 spreads it over most of a 49k vocabulary)."""
    from transformers import AutoConfig

    from lord.models import random_model

    config = AutoConfig.for_model("llama", hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2, intermediate_size=64, vocab_size=vocab)
    model = random_model(config, dtype=torch.float64)
    with torch.no_grad():
        model.lm_head.weight.mul_(logit_scale)
    return model


def _lines(path):
    return sorted(path.read_text().splitlines())


@pytest.mark.parametrize("temperature", [0.2, 1.0])  # 1.0: flat enough that the nucleus outgrows its candidates
def test_a_sample_does_not_depend_on_sharing_or_on_its_batch_mates(temperature):
    """float64, where rounding cannot reach a token: alone, batched, shared with all of a task's samples in one
    admission or spread over several (fewer free rows than samples) -- every sample's tokens are the same."""
    vocab = 97
    model = _tiny_float64(vocab)
    g = torch.Generator().manual_seed(1)
    prompts = {f"t{k}": torch.randint(1, vocab, (length,), generator=g).tolist() for k, length in
               enumerate((11, 5, 8))}
    n = 4
    requests = [Request((t, i), prompts[t], sample_seed(0, t, i)) for t in prompts for i in range(n)]
    length = {(t, i): 3 + (5 * k + 3 * i) % 7 for k, t in enumerate(prompts) for i in range(n)}

    def run(max_rows, share):
        out = {}
        stats = generate_continuous(model, requests, max_rows=max_rows, max_new_tokens=20,
                                    is_done=lambda r: len(r.out) >= length[r.request.key],
                                    on_finished=lambda r: out.__setitem__(r.request.key, r.out),
                                    temperature=temperature, top_p=0.95, share_prefix=share)
        return out, stats

    alone, alone_stats = run(1, False)
    assert alone_stats.prefills == len(requests)
    assert len({tuple(v) for v in alone.values()}) > n  # samples of one prompt differ: each has its own stream
    for max_rows, share in ((5, False), (12, True), (3, True)):
        got, stats = run(max_rows, share)
        assert got == alone, (max_rows, share)
        if share:  # one prefill per task; the other samples of a task joined on it
            assert stats.prefills == len(prompts) and stats.shared_rows == len(requests) - len(prompts)
    # the last: 4 samples a task, 3 rows: a task's samples joined in different admissions, on its kept prefill
    assert stats.reprefills_avoided > 0 and stats.reprefill_tokens_avoided > 0 and stats.kept_prefill_peak_bytes > 0


def test_a_batch_chooses_for_each_row_what_the_row_chooses_alone():
    """float32: softmax and top-k over all rows at once give each row its own values, so its draw is the same."""
    from lord.humaneval.batching import Row, _choose

    logits = torch.randn(9, 1000, generator=torch.Generator().manual_seed(3)) * 4

    def rows():
        return [Row(Request((i, 0), [], 0), torch.Generator().manual_seed(100 + i)) for i in range(9)]

    for temperature, top_p in ((0.2, 0.95), (1.0, 0.95), (1.0, 0.5), (0.7, 1.0)):
        batched = _choose(logits, rows(), temperature, top_p, False)
        alone = [_choose(logits[i:i + 1], [row], temperature, top_p, False)[0] for i, row in enumerate(rows())]
        assert batched == alone, (temperature, top_p)


@pytest.mark.parametrize("spread", [40.0, 0.5])  # a nucleus inside the candidates, and one far beyond them
def test_sampling_draws_only_from_the_nucleus_in_its_proportions(spread):
    from lord.humaneval.batching import NUCLEUS_CANDIDATES, Row, _choose

    vocab, top_p, draws = 300, 0.9, 4000
    logits = torch.linspace(0, -spread, vocab)[torch.randperm(vocab, generator=torch.Generator().manual_seed(0))]
    p = torch.softmax(logits.double(), -1)
    order = p.argsort(descending=True)
    before = p[order].cumsum(0) - p[order]
    nucleus = order[before < top_p]  # the definition: the smallest most-probable set whose mass reaches top_p
    assert (len(nucleus) > NUCLEUS_CANDIDATES) == (spread < 1)
    row = Row(Request((0, 0), [], 0), torch.Generator().manual_seed(5))
    counts = torch.bincount(torch.tensor([_choose(logits[None], [row], 1.0, top_p, False)[0] for _ in range(draws)]),
                            minlength=vocab).double()
    outside = torch.ones(vocab, dtype=torch.bool)
    outside[nucleus] = False
    assert counts[outside].sum() == 0
    expected = p[nucleus] / p[nucleus].sum()
    assert ((counts[nucleus] / draws - expected).abs().max()
            < 4 * (expected * (1 - expected) / draws).sqrt().max() + 1e-3)


def test_a_sliding_window_model_falls_back_to_static_batches_and_says_so_once(tmp_path, smollm2, caplog):
    from conftest import tiny_model
    from lord.humaneval.batching import supports_continuous_batching

    _, tok, _ = smollm2
    window = tiny_model("starcoder2", vocab_size=len(tok), sliding_window=64)
    plain = tiny_model("starcoder2", vocab_size=len(tok))
    assert not supports_continuous_batching(window) and supports_continuous_batching(plain)
    problems = dict(list(load_problems().items())[:2])
    preset = get_preset("code_eval", n=2, max_new_tokens=4)
    said = {}
    for model, mode in ((window, "static"), (plain, "continuous")):
        stats = {}
        caplog.clear()
        with caplog.at_level("INFO", logger="lord.humaneval.generate"):
            generate_samples(model, tok, problems, preset, tmp_path / f"{mode}.jsonl", batch_size=4, progress=False,
                             stats=stats)
        said[mode] = [r.getMessage() for r in caplog.records if "prefix sharing are off" in r.getMessage()]
        assert stats["mode"] == mode and stats["share_prefix"] == (mode == "continuous")
        assert len(_lines(tmp_path / f"{mode}.jsonl")) == 4
    assert said["continuous"] == [] and len(said["static"]) == 1 and "Starcoder2ForCausalLM" in said["static"][0]


@pytest.mark.slow
def test_a_shared_sampled_run_killed_mid_task_resumes_to_the_same_bytes(tmp_path, smollm2):
    """Killed after 4 of a task's samples (and in the middle of writing the fifth): the resumed run prefills that
    task again for its last samples only, and every line it writes is byte for byte the uninterrupted run's --
    and the run without sharing writes them too."""
    _, tok, _ = smollm2
    model = _tiny_float64(len(tok), logit_scale=20)
    problems = dict(list(load_problems().items())[:3])
    preset = get_preset("code_eval", n=6, max_new_tokens=8)
    full, resumed, unshared = tmp_path / "full.jsonl", tmp_path / "resumed.jsonl", tmp_path / "unshared.jsonl"
    stats = {}
    generate_samples(model, tok, problems, preset, full, seed=3, batch_size=4, progress=False, stats=stats)
    assert stats["share_prefix"] and stats["prefills"] == 3 and stats["reprefills_avoided"] > 0
    lines = full.read_text().splitlines()
    first_task = json.loads(lines[0])["task_id"]
    assert [json.loads(line)["task_id"] for line in lines[:4]] == [first_task] * 4
    resumed.write_text("\n".join(lines[:4]) + "\n" + lines[4][:25])
    stats = {}
    generate_samples(model, tok, problems, preset, resumed, seed=3, batch_size=4, progress=False, stats=stats)
    assert stats["prefills"] == 3 and stats["shared_rows"] == 18 - 4 - 3  # the first task again, for 2 samples
    assert _lines(resumed) == _lines(full) and len(_lines(full)) == 18
    generate_samples(model, tok, problems, preset, unshared, seed=3, batch_size=5, progress=False,
                     share_prefix=False)
    assert _lines(unshared) == _lines(full)


# the batch width, chosen from the measured decode cost ----------------------------------------------------------
def test_the_width_chosen_is_the_narrowest_within_the_tolerance_of_the_best_tokens_per_s():
    from lord.humaneval.width import WIDTHS, choose_width

    for weights_ms, row_ms in ((150.0, 12.0), (150.0, 1.0), (20.0, 30.0), (500.0, 0.5)):  # t(w) = a + b w
        curve = {w: weights_ms + row_ms * w for w in WIDTHS}
        rate = {w: w / ms for w, ms in curve.items()}
        good = [w for w in WIDTHS if rate[w] >= 0.95 * max(rate.values())]
        chosen = choose_width(curve)
        assert chosen == min(good) and chosen in curve
        assert choose_width({w: 7.3 * ms for w, ms in curve.items()}) == chosen  # only ratios matter
        assert choose_width(curve, tolerance=0.0) == max(WIDTHS)  # t/w falls all the way: the widest is best
    # the CPU curve (noisy, still rising at 16 rows) and one that flattens
    assert choose_width({1: 149, 2: 281, 4: 331, 8: 282, 16: 342}) == 16
    assert choose_width({1: 149, 8: 282, 16: 342, 32: 600, 64: 1150, 96: 1800}) == 32


def test_bad_decode_curves_and_queues_are_refused_in_one_line():
    from lord.errors import LordError
    from lord.humaneval.width import choose_width, widths_for

    for curve in ({}, {1: 0.0}, {1: 10.0, 2: float("nan")}):
        with pytest.raises(LordError, match="positive step times"):
            choose_width(curve)
    with pytest.raises(LordError, match="tolerance"):
        choose_width({1: 1.0}, tolerance=1.5)
    with pytest.raises(LordError, match="no samples to generate"):
        widths_for(0)
    assert widths_for(20) == [1, 2, 4, 8, 16, 20] and widths_for(16) == [1, 2, 4, 8, 16]
    assert widths_for(1640)[-1] == 96 and widths_for(1) == [1]


@pytest.mark.slow
def test_auto_width_is_measured_once_recorded_and_reused_on_resume(tmp_path, smollm2):
    from lord.humaneval.evaluate import WIDTH_FILE, evaluate_humaneval

    _, tok, _ = smollm2
    model = _tiny_float64(len(tok), logit_scale=20).float()
    kw = dict(preset="code_eval", n=3, limit=2, max_new_tokens=4, batch_size="auto", progress=False)
    first = evaluate_humaneval(model, tok, tmp_path, **kw)
    width = first["generation_width"]
    assert set(width["decode_step_ms_by_rows"]) == {1, 2, 4, 6} and width["queue"] == 6
    assert width["batch_size"] in width["decode_step_ms_by_rows"] and all(
        ms > 0 for ms in width["decode_step_ms_by_rows"].values())
    assert first["per_seed"][0]["generation"]["batch_size"] == width["batch_size"]
    assert (tmp_path / WIDTH_FILE).is_file()
    (tmp_path / "samples-code_eval-seed0.jsonl").unlink()
    again = evaluate_humaneval(model, tok, tmp_path, **kw)
    assert again["generation_width"] == width | {"reused": True}


def test_the_decode_curve_can_be_measured_on_a_sliding_window_cache_too():
    from conftest import tiny_model
    from lord.humaneval.width import measure_decode_curve

    curve = measure_decode_curve(tiny_model("starcoder2", sliding_window=8), [1, 3], context=12, steps=2)
    assert set(curve) == {1, 3} and all(ms > 0 for ms in curve.values())


def _finished_run(folder, stem, inputs, files):
    """A finished HumanEval result ``<stem>.json`` with these identity inputs, and its samples folder."""
    (folder / stem).mkdir(parents=True)
    for name, text in files.items():
        (folder / stem / name).write_text(text)
    (folder / f"{stem}.json").write_text(json.dumps(
        {"status": "ok", "identity": {"id": stem.rsplit("-", 1)[1] + "0" * 56, "inputs": inputs}}))


def test_more_seeds_copy_the_seeds_a_run_differing_only_in_seeds_has_and_nothing_else(tmp_path):
    from lord.humaneval.seed_reuse import reuse_seeds

    config = {"eval": {"preset": "code_eval", "seeds": [0], "max_new_tokens": 512}, "method": {"name": "lord"}}
    inputs = {"config": config, "weights": "w", "data": {"validation": "v"}}
    seed0 = {"samples-code_eval-seed0.jsonl": "s0\n", "results-code_eval-seed0.jsonl": "r0\n"}
    _finished_run(tmp_path, "reduction-50.humaneval-code_eval-aaaaaaaa", inputs, seed0)
    # another budget of new tokens: same seed, other samples -- never copied
    other = {**inputs, "config": {**config, "eval": {**config["eval"], "max_new_tokens": 384}}}
    _finished_run(tmp_path, "reduction-50.humaneval-code_eval-bbbbbbbb", other,
                  {"samples-code_eval-seed1.jsonl": "wrong\n"})
    # the same run but for its seeds, [0, 1]: it has seed 1's files, yet it failed -- never copied from
    _finished_run(tmp_path, "reduction-50.humaneval-code_eval-dddddddd",
                  {**inputs, "config": {**config, "eval": {**config["eval"], "seeds": [0, 1]}}},
                  {"samples-code_eval-seed1.jsonl": "failed run\n"})
    failed = tmp_path / "reduction-50.humaneval-code_eval-dddddddd.json"
    failed.write_text(json.dumps({**json.loads(failed.read_text()), "status": "error"}))
    (tmp_path / "not-a-result.json").write_text("[1, 2]")  # any other JSON in the folder is passed over
    mine = {**inputs, "config": {**config, "eval": {**config["eval"], "seeds": [0, 1, 2]}}}
    here = tmp_path / "reduction-50.humaneval-code_eval-cccccccc"
    assert reuse_seeds(here, {"id": "c" * 64, "inputs": mine}, [0, 1, 2]) == {0: "aaaaaaaa"}
    assert {p.name: p.read_text() for p in here.iterdir() if p.suffix == ".jsonl"} == seed0
    # started again (a resumed run): the copy is not repeated, and the result still says where seed 0 came from;
    # a seed this run already has is never overwritten
    (here / "samples-code_eval-seed0.jsonl").write_text("mine\n")
    assert reuse_seeds(here, {"id": "c" * 64, "inputs": mine}, [0, 1, 2]) == {0: "aaaaaaaa"}
    assert (here / "samples-code_eval-seed0.jsonl").read_text() == "mine\n"
    assert reuse_seeds(tmp_path / "elsewhere", None, [0]) == {}

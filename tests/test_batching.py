"""Continuous batching of HumanEval generation: rows leave and join the batch, yet each row's tokens are what it
would get alone (greedy: until the first near-tie of its top two logits; sampling: its own random stream)."""

import json

import torch

from lord.humaneval.batching import Request, generate_continuous, sample_seed
from lord.humaneval.evaluate import load_problems
from lord.humaneval.generate import generate_samples, get_preset

# batched float32 logits differ from unbatched ones by ~1e-6; below this top-2 gap a flip is rounding, not a bug
NEAR_TIE = 1e-3


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

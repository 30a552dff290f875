"""Stage ``lora`` (lord/lora.py): the instruction set against its definition, LoRA merged into a LoRD model's
factors (ranks kept, every change of rank <= r, a group's shared A trained), a healed model saved and reloaded,
and the preset's quick points end to end."""

import copy
import textwrap
from pathlib import Path

import pytest
import torch

from conftest import calib_batches, tiny_model
from lord.compress import CompressionConfig, compress_model
from lord.errors import LordError
from lord.lora import (LoraSettings, batches, instruction_examples, instructions_from_source, target_names,
                       train_lora)
from lord.modules import GroupedLowRankLinear, LowRankLinear, SharedBottleneck
from lord.params import count_parameters
from lord.ranks import RankSpec

pytest.importorskip("peft")

SOURCE = textwrap.dedent('''
    import functools


    @functools.cache
    def area(w, h):
        """Area of a w x h rectangle.

        Both sides in metres.
        """
        if w < 0 or h < 0:
            raise ValueError("negative side")
        return w * h


    def no_doc(x):
        return x


    def only_doc():
        """Nothing else."""


    class Box:
        def volume(self, d):
            """Volume, with a string that has lines
    less indented than the method."""
            s = """
    raw
    """
            return self.w * d
''')


def test_instructions_split_signature_and_docstring_from_the_body():
    found = {i.name: i for i in instructions_from_source(SOURCE, "m.py")}
    assert set(found) == {"area", "volume"}  # no docstring, or nothing after it: left out
    area = found["area"]
    assert area.prompt.startswith("def area(w, h):\n") and "@functools" not in area.prompt
    assert area.prompt.endswith('Both sides in metres.\n    """\n')
    assert area.target == '    if w < 0 or h < 0:\n        raise ValueError("negative side")\n    return w * h\n'
    volume = found["volume"]  # a method: dedented by its own indentation, the string's lines kept as they are
    assert volume.prompt.startswith("def volume(self, d):\n")
    assert volume.target.endswith("\n    return self.w * d\n") and "\nraw\n" in volume.target
    assert instructions_from_source("def broken(:\n", "x.py") == []


class CharTokenizer:
    """One token per character, eos = 0: enough to check the example layout."""
    eos_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        return type("Enc", (), {"input_ids": [1 + ord(c) % 90 for c in text]})()


def test_examples_mask_the_prompt_out_of_the_loss_and_batches_mask_padding():
    found = instructions_from_source(SOURCE, "m.py")
    examples = instruction_examples(found, CharTokenizer(), seq_len=400)
    for ins, ex in zip(found, examples):
        n_prompt = len(ins.prompt)
        assert ex["labels"][:n_prompt] == [-100] * n_prompt
        assert ex["labels"][n_prompt:] == ex["input_ids"][n_prompt:] and ex["input_ids"][-1] == 0  # eos ends it
    assert instruction_examples(found, CharTokenizer(), seq_len=40) == []  # prompts longer than seq_len - 8
    got = list(batches(examples, batch_size=3, steps=2, pad_id=5))
    assert len(got) == 2
    b = got[0]
    lengths = b["attention_mask"].sum(1)
    for j in range(3):
        n = int(lengths[j])
        assert (b["labels"][j, n:] == -100).all() and (b["input_ids"][j, n:] == 5).all()
    # cycling: the 4th sequence is the 2nd example again
    assert got[1]["input_ids"][0, :len(examples[1]["input_ids"])].tolist() == examples[1]["input_ids"]


def _lord_model(group: bool):
    model = tiny_model("qwen2")
    compress_model(model, CompressionConfig(method="lord_meanfix", kinds=["all"], group=group,
                                            rank=RankSpec("reduction", 50, force=True)),
                   batches=calib_batches(), progress=False)
    return model


def _lm_batches(steps, seed=3):
    ids = calib_batches(seed=seed, n=1, batch=4, seq=32)[0]
    for _ in range(steps):
        yield {"input_ids": ids, "labels": ids, "attention_mask": torch.ones_like(ids)}


@pytest.mark.slow
@pytest.mark.parametrize("group", [False, True])
def test_lora_merges_into_the_factors_as_a_change_of_rank_at_most_r(group):
    model = _lord_model(group)
    before = copy.deepcopy(model)
    params = count_parameters(model)
    s = LoraSettings(data="corpus", steps=30, lr=1e-2, r=2, warmup=0)
    batch = next(_lm_batches(1))
    with torch.no_grad():
        loss_before = float(model(**batch).loss)
    record = train_lora(model, _lm_batches(s.steps), s, target_names(model), progress=False)
    assert count_parameters(model) == params and record["steps"] == 30
    assert record["trainable_params"] > 0 and record["tokens"] == 30 * 4 * 32
    changed = 0
    for (name, p), (_, q) in zip(model.named_parameters(), before.named_parameters()):
        delta = (p - q).detach()
        if name.endswith(".weight") and p.dim() == 2 and ".layers." in name:
            assert torch.linalg.matrix_rank(delta, atol=1e-6) <= s.r, name  # W + (alpha/r) B_l A_l
            changed += bool(delta.abs().max() > 0)
        else:  # embeddings, norms, biases: not adapted
            assert torch.equal(p, q), name
        assert p.requires_grad == q.requires_grad
    assert changed == len(target_names(model))  # every targeted linear was trained
    types = lambda m: [type(x).__name__ for x in m.modules()]  # noqa: E731
    assert types(model) == types(before)  # still the same LoRD structure
    if group:
        shared = [m for m in model.modules() if isinstance(m, SharedBottleneck)]
        assert shared and all(isinstance(m._shared, SharedBottleneck) for m in model.modules()
                              if isinstance(m, GroupedLowRankLinear))
        members = [m for m in model.modules() if isinstance(m, GroupedLowRankLinear)]
        assert {id(m._shared) for m in members} <= {id(m) for m in shared}  # pointed back at the module tree
    else:
        assert any(isinstance(m, LowRankLinear) for m in model.modules())
    with torch.no_grad():
        assert float(model(**batch).loss) < loss_before  # empirical: 30 steps on one batch fit it better
    assert record["loss_last"] < record["loss_first"]


def test_a_healed_lord_model_saves_and_reloads_as_a_lord_checkpoint(tmp_path, probe_ids):
    from lord.checkpoint import load_compressed, save_compressed

    model = tiny_model("qwen2")
    report = compress_model(model, CompressionConfig(method="lord", kinds=["all"], group=True,
                                                     rank=RankSpec("reduction", 50, force=True)),
                            batches=calib_batches(), progress=False)
    train_lora(model, _lm_batches(3), LoraSettings(data="corpus", steps=3, lr=1e-2), target_names(model),
               progress=False)
    save_compressed(model, tmp_path / "m", report["decompositions"])
    loaded, _ = load_compressed(tmp_path / "m")
    assert torch.equal(loaded(probe_ids).logits, model(probe_ids).logits)


@pytest.mark.parametrize("section,match", [
    ({"data": "chat"}, "lora.data='chat' is unknown"),
    ({"steps": 0}, "lora.steps=0 must be an integer >= 1"),
    ({"lr": -1}, "lora.lr=-1 must be a number > 0"),
    ({"dropout": 1.0}, r"lora.dropout=1.0 must be a number in \[0, 1\)"),
    ({"rank": 8}, r"lora has unknown key\(s\) \['rank'\]"),
])
def test_bad_lora_settings_are_one_line_errors(section, match):
    with pytest.raises(LordError, match=match):
        LoraSettings.from_config(section)


def test_the_lord_model_trains_with_less_memory_for_its_weights():
    """What training holds besides activations is smaller for the LoRD model (fewer frozen weights)."""
    dense, lord = tiny_model("qwen2"), _lord_model(group=True)
    s = LoraSettings(data="corpus", steps=1)
    a = train_lora(dense, _lm_batches(1), s, target_names(dense), progress=False)
    b = train_lora(lord, _lm_batches(1), s, target_names(lord), progress=False)
    assert b["model_params"] < a["model_params"] and b["state_bytes"] < a["state_bytes"]


@pytest.mark.slow
def test_the_presets_quick_points_run_end_to_end_and_reach_the_table(tmp_path, smollm2):
    """a5_lora on SmolLM2-135M (quick profile, 3 steps): the dense model with instruction LoRA, a LoRD model
    before and after healing -- what the stage records and the analysis table built from the results."""
    import sys

    from analysis.composition import lora_table
    from analysis.results import load_results
    from experiments.run import run

    sys.path.insert(0, str(Path(__file__).parent))
    from test_experiments import preset_jobs

    line = ["model=smollm2-135m", "profile=quick", f"paths.results_dir={tmp_path}", "lora.steps=3",
            "lora.seq_len=64", "lora.batch_size=2"]
    jobs = preset_jobs("a5_lora", line)
    dense = [c for c in jobs if c.method.name == "dense" and c.lora.data == "instructions"]
    healing = [c for c in jobs if c.method.name == "lord_meanfix" and c.layers.name == "mlp_down"
               and c.rank.value == 50 and ("lora" not in c.stages or c.lora.data == "corpus")]
    assert len(dense) == 1 and len(healing) == 2
    results = [run(c) for c in dense + healing]
    assert all(r["status"] == "ok" for r in results), [r.get("error") for r in results]
    trained = [r for r in results if "lora" in r["stages"]]
    assert len(trained) == 2
    for r in trained:
        rec = r["stages"]["lora"]
        assert rec["steps"] == 3 and rec["tokens"] > 0 and rec["memory"]["rss_peak_mib"] > 0
        assert rec["data"]["split"] == "calibration"  # never the validation split
    frame, problems = load_results(tmp_path)
    assert not problems
    table = lora_table(frame[frame.experiment == "a5_lora"])
    assert len(table) == 2 and table["after LoRA"].notna().all()


def test_lora_table_compares_a_trained_compression_with_the_dense_model_trained_alike():
    """gap closed = (before - after) / (before - dense); the control is the dense run with the same LoRA data and
    steps, and perplexity is reported as % above it (a run with other data or steps is not its control)."""
    import pandas as pd

    from analysis.composition import lora_table

    base = {"eval": "perplexity", "model": "m", "layers": "mlp_down", "dense_perplexity": 10.0,
            "params_compressed": 1e6, "lora_tokens_per_s": 1.0, "lora_peak_rss_mib": 1.0, "lora_state_bytes": 2**20,
            "lora_loss_first": 2.0, "lora_loss_last": 1.0, "pass_at_1": None}
    rows = [dict(base, method="lord_meanfix", rank_value=50.0, perplexity=16.0, lora_data=None, lora_steps=None),
            dict(base, method="lord_meanfix", rank_value=50.0, perplexity=12.0, lora_data="corpus", lora_steps=100),
            dict(base, method="dense", rank_value=0.0, perplexity=8.0, lora_data="corpus", lora_steps=100),
            dict(base, method="dense", rank_value=0.0, perplexity=9.0, lora_data="corpus", lora_steps=50),
            dict(base, method="dense", rank_value=0.0, perplexity=9.5, lora_data="instructions", lora_steps=100)]
    t = lora_table(pd.DataFrame(rows)).set_index(["compression", "LoRA data"])
    lord = t.loc[("lord_meanfix mlp_down 50% rank red.", "corpus")]
    assert lord["before LoRA"] == 16.0 and lord["gap closed %"] == pytest.approx(100 * 4 / 6)
    assert lord["dense + same LoRA"] == 8.0 and lord["after vs dense + same LoRA"] == pytest.approx(50.0)
    assert pd.isna(t.loc[("dense", "instructions")]["after vs dense + same LoRA"])


def test_lora_table_reads_a_humaneval_runs_baseline_from_the_untrained_dense_run():
    """pass@1 has no dense value inside the run: it is the untrained dense run's of the same experiment (never the
    dense run after LoRA), so a trained dense run shows its own before, and a compression its gap closed."""
    import pandas as pd

    from analysis.composition import lora_table

    base = {"eval": "humaneval", "model": "m", "experiment": "a5_lora", "layers": "mlp_down", "quant_bits": None,
            "prune": None, "params_compressed": 1e6, "lora_tokens_per_s": 1.0, "lora_peak_rss_mib": 1.0,
            "lora_state_bytes": 2**20, "lora_loss_first": 2.0, "lora_loss_last": 1.0, "perplexity": None,
            "dense_perplexity": None}
    rows = [dict(base, method="dense", rank_value=0.0, pass_at_1=32.9, lora_data="instructions", lora_steps=100),
            dict(base, method="dense", rank_value=0.0, pass_at_1=43.3, lora_data=None, lora_steps=None),
            dict(base, method="lord_meanfix", rank_value=50.0, pass_at_1=4.3, lora_data=None, lora_steps=None),
            dict(base, method="lord_meanfix", rank_value=50.0, pass_at_1=8.5, lora_data="instructions", lora_steps=100)]
    t = lora_table(pd.DataFrame(rows)).set_index("compression")
    assert t.loc["dense", "before LoRA"] == 43.3 and t.loc["dense", "after LoRA"] == 32.9
    lord = t.loc["lord_meanfix mlp_down 50% rank red."]
    assert lord["dense value"] == 43.3 and lord["before LoRA"] == 4.3
    assert lord["gap closed %"] == pytest.approx(100 * (4.3 - 8.5) / (4.3 - 43.3))
    assert lord["after vs dense + same LoRA"] == pytest.approx(8.5 - 32.9)

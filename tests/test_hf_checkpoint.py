"""A saved compressed model is a Hugging Face checkpoint: one-call loading with trust_remote_code (and a clear
failure without it), where lord is not installed; a dense export; a model card; lm-eval and peft on it."""

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import VOCAB, calib_batches, tiny_model
from lord.checkpoint import load_compressed, save_compressed
from lord.compress import CompressionConfig, compress_model
from lord.errors import LordError
from lord.ranks import RankSpec


def _compressed(arch, kinds, group, method, **overrides):
    model = tiny_model(arch, **overrides)
    report = compress_model(model, CompressionConfig(method=method, kinds=kinds, group=group,
                                                     rank=RankSpec("reduction", 50, force=True)),
                            batches=calib_batches(), progress=False)
    return model, report["decompositions"]


CASES = [  # every architecture mapping lord has; grouped and not; tied head kept, tied head untied, untied
    ("qwen2", ["all"], True, "lord", {"tie_word_embeddings": True}),
    ("llama", ["mlp_down", "attn_out"], False, "lord_meanfix", {}),
    ("gpt2", ["all", "embed", "lm_head"], False, "whiten", {}),
    ("codegen", ["attn_qkv"], False, "svd", {}),
    ("gpt_bigcode", ["all"], False, "lord_meanfix", {}),
    ("starcoder2", ["all"], True, "lord", {}),
]


@pytest.mark.slow
@pytest.mark.parametrize("arch,kinds,group,method,overrides", CASES, ids=[c[0] for c in CASES])
def test_transformers_loads_the_checkpoint_in_one_call_with_identical_logits(tmp_path, probe_ids, arch, kinds,
                                                                              group, method, overrides):
    from transformers import AutoModelForCausalLM

    model, decs = _compressed(arch, kinds, group, method, **overrides)
    save_compressed(model, tmp_path / "m", decs)
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["model_type"] == "lord" and config["base_model_type"] == arch
    assert len(config["lord"]["decompositions"]) == len(decs)

    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "m", trust_remote_code=True)
    ours, _ = load_compressed(tmp_path / "m")
    with torch.no_grad():
        want = model(probe_ids).logits
        assert torch.equal(hf(probe_ids).logits, want)
        assert torch.equal(ours(probe_ids).logits, want)
    greedy = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert torch.equal(hf.generate(probe_ids[:1, :6], **greedy), model.generate(probe_ids[:1, :6], **greedy))
    # a loaded checkpoint saves again (transformers' save_pretrained keeps the code next to the weights)
    hf.save_pretrained(tmp_path / "again")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "again", trust_remote_code=True)
    with torch.no_grad():
        assert torch.equal(again(probe_ids).logits, want)


def test_an_architecture_mapped_in_config_saves_and_loads(tmp_path, probe_ids):
    from transformers import AutoConfig, AutoModelForCausalLM

    from lord.models import random_model

    neox = random_model(AutoConfig.for_model("gpt_neox", hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                             intermediate_size=64, vocab_size=97), bias_std=0.5)
    mapping = {"blocks": "gpt_neox.layers", "kinds": {"mlp_down": ["mlp.dense_4h_to_h"],
                                                      "attn_qkv": ["attention.query_key_value"]}}
    report = compress_model(neox, CompressionConfig(method="lord_meanfix", kinds=["all"], architecture=mapping,
                                                    rank=RankSpec("reduction", 50, force=True)),
                            batches=calib_batches(), progress=False)
    save_compressed(neox, tmp_path / "m", report["decompositions"])
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "m", trust_remote_code=True)
    with torch.no_grad():
        assert torch.equal(hf(probe_ids).logits, neox(probe_ids).logits)


def test_where_lord_is_imported_the_folder_loads_without_trust_remote_code_by_lords_own_code(tmp_path, probe_ids):
    """Importing lord registers "lord" with transformers' Auto classes: the folder then loads without
    trust_remote_code, by the installed code (the folder's own copy does not run). Where lord is not imported,
    the same call is refused (test_the_checkpoint_loads_where_lord_cannot_be_imported)."""
    from transformers import AutoModelForCausalLM

    model, decs = _compressed("llama", ["mlp_down"], False, "svd")
    save_compressed(model, tmp_path / "m", decs)
    (tmp_path / "m" / "modeling_lord.py").write_text("raise RuntimeError('the folder code ran')\n")
    with torch.no_grad():
        want = model(probe_ids).logits
        for trust in (None, False):
            loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m", trust_remote_code=trust)
            assert type(loaded).__name__ == "LordForCausalLM"
            assert torch.equal(loaded(probe_ids).logits, want)


# what a process that must not import them gets: `import lord` (and hqq, peft) fails
_BLOCK = "import sys\nfor _name in ('lord', 'hqq', 'peft'):\n    sys.modules[_name] = None\n"


@pytest.mark.slow
def test_the_checkpoint_loads_where_lord_cannot_be_imported(tmp_path, probe_ids):
    """The shipped file imports, wherever transformers' import scan looks, only the standard library, torch,
    transformers and safetensors; in a process where lord, hqq and peft cannot be imported, a checkpoint loads
    with trust_remote_code and gives load_compressed's logits bit for bit, loading it without trust_remote_code
    is refused with transformers' message, and a quantized checkpoint fails in one line naming hqq."""
    from transformers.dynamic_module_utils import get_imports

    from lord.quantization import quantize_model

    model, decs = _compressed("qwen2", ["all"], True, "lord_meanfix")
    model.config.architectures = ["Qwen2ForCausalLM"]  # as a hub model's config has it
    save_compressed(model, tmp_path / "m", decs)
    shipped = tmp_path / "m" / "modeling_lord.py"
    assert set(get_imports(shipped)) - set(sys.stdlib_module_names) <= {"torch", "transformers", "safetensors"}
    quantize_model(model, bits=4, group_size=16, progress=False)
    save_compressed(model, tmp_path / "q", decs)
    torch.save(probe_ids, tmp_path / "probe.pt")
    script = _BLOCK + f"""
import torch
from transformers import AutoModelForCausalLM
for folder, trust in (({str(tmp_path / 'm')!r}, False), ({str(tmp_path / 'q')!r}, True)):
    try:
        AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=trust)
        print('refused: no')
    except (ValueError, ImportError) as e:
        print('refused:', type(e).__name__, repr(str(e)))
m = AutoModelForCausalLM.from_pretrained({str(tmp_path / 'm')!r}, trust_remote_code=True)
torch.save(m(torch.load({str(tmp_path / 'probe.pt')!r})).logits, {str(tmp_path / 'out.pt')!r})
print('class:', type(m).__name__, m.config.architectures, m.config.base_architectures)
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_MODULES_CACHE"] = str(tmp_path / "modules")
    p = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    lines = p.stdout.splitlines()
    assert "class: LordForCausalLM ['LordForCausalLM'] ['Qwen2ForCausalLM']" in lines
    refused = [line for line in lines if line.startswith("refused:")]
    assert refused[0].startswith("refused: ValueError") and "trust_remote_code=True" in refused[0]
    assert refused[1] == ("refused: ImportError 'this LoRD checkpoint holds HQQ-quantized layers (config.json: "
                          "lord.quantization); loading it needs the hqq package, which is not installed: "
                          "pip install hqq==0.2.8.post1'")
    ours, _ = load_compressed(tmp_path / "m")
    with torch.no_grad():
        assert torch.equal(torch.load(tmp_path / "out.pt"), ours(probe_ids).logits)


def test_the_config_names_the_lord_class_never_a_dense_one(tmp_path, probe_ids):
    """config.json's architectures is ["LordForCausalLM"] however the folder was written (save_compressed,
    transformers' save_pretrained of a loaded model, save_compressed of a model load_compressed gave); the base
    class names stay in base_architectures, where the export and the fallback for unmapped types read them.
    Folders written before (architectures = the base class) still load, both ways."""
    from transformers import AutoModelForCausalLM

    from lord.checkpoint import read_structure

    model, decs = _compressed("qwen2", ["mlp_down"], False, "lord")
    model.config.architectures = ["Qwen2ForCausalLM"]
    save_compressed(model, tmp_path / "m", decs)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "m", trust_remote_code=True)
    hf.save_pretrained(tmp_path / "hf")
    ours, _ = load_compressed(tmp_path / "m")
    save_compressed(ours, tmp_path / "ours")
    for folder in ("m", "hf", "ours"):
        config = json.loads((tmp_path / folder / "config.json").read_text())
        assert (config["architectures"], config["base_architectures"]) == (["LordForCausalLM"], ["Qwen2ForCausalLM"])
        assert read_structure(tmp_path / folder)[0]["architectures"] == ["Qwen2ForCausalLM"]  # the dense config

    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["architectures"] = config.pop("base_architectures")  # what earlier versions wrote
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with torch.no_grad():
        want = model(probe_ids).logits
        old = AutoModelForCausalLM.from_pretrained(tmp_path / "m", trust_remote_code=True)
        assert torch.equal(old(probe_ids).logits, want)
        assert torch.equal(load_compressed(tmp_path / "m")[0](probe_ids).logits, want)
    assert old.config.architectures == ["LordForCausalLM"] and old.config.base_architectures == ["Qwen2ForCausalLM"]


def _word_tokenizer():
    """A tokenizer of the tiny models' vocabulary: words t0..t96."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="t0", eos_token="t1", pad_token="t0")


def test_the_text_generation_pipeline_takes_the_checkpoint_without_complaint(tmp_path, capfd):
    """The class is registered with transformers' Auto classes and named among the causal LMs, so
    pipeline() does not log "not supported for text-generation"; it generates."""
    from transformers import pipeline

    model, decs = _compressed("qwen2", ["all"], True, "lord")
    save_compressed(model, tmp_path / "m", decs, tokenizer=_word_tokenizer())
    capfd.readouterr()
    generate = pipeline("text-generation", model=str(tmp_path / "m"), trust_remote_code=True)
    out = generate("t5 t6 t7", max_new_tokens=3, do_sample=False)
    assert out[0]["generated_text"].startswith("t5 t6 t7")
    assert "not supported" not in capfd.readouterr().err


@pytest.mark.slow
def test_format_1_directories_still_load(tmp_path, probe_ids):
    """Format 1: the dense config.json and a separate lord.json (what earlier versions wrote)."""
    model, decs = _compressed("gpt2", ["all", "embed"], False, "whiten")
    save_compressed(model, tmp_path / "m", decs)
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    lord = config.pop("lord")
    config["model_type"] = config.pop("base_model_type")
    config.pop("auto_map")
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    (tmp_path / "m" / "lord.json").write_text(json.dumps({**lord, "format_version": 1, "aliases": {}}))
    (tmp_path / "m" / "modeling_lord.py").unlink()
    loaded, _ = load_compressed(tmp_path / "m")
    with torch.no_grad():
        assert torch.equal(loaded(probe_ids).logits, model(probe_ids).logits)


@pytest.mark.parametrize("arch,method,target", [
    ("qwen2", "lord_meanfix", "llama"),  # biases Qwen2's MLP and o_proj cannot hold: a Llama with bias flags
    ("qwen2", "lord", "qwen2"),
    ("gpt2", "lord_meanfix", "gpt2"),
    ("starcoder2", "lord_meanfix", "starcoder2"),
])
def test_export_merges_into_a_dense_checkpoint_with_the_same_logits(tmp_path, probe_ids, arch, method, target,
                                                                    capsys):
    from transformers import AutoModelForCausalLM

    from lord.cli import main

    from huggingface_hub import ModelCard

    model, decs = _compressed(arch, ["all"], arch != "gpt2", method)
    save_compressed(model, tmp_path / "m", decs, card={"base_model": "HuggingFaceTB/SmolLM2-135M-Instruct",
                                                       "licence_id": "apache-2.0", "method": method})
    assert main(["export", "--merge", str(tmp_path / "m"), str(tmp_path / "dense")]) == 0
    assert json.loads((tmp_path / "dense" / "config.json").read_text())["model_type"] == target
    assert not (tmp_path / "dense" / "modeling_lord.py").exists()
    card = ModelCard.load(tmp_path / "dense" / "README.md").data.to_dict()  # its own card, from the source's
    assert (card["base_model"], card["base_model_relation"], card["license"]) == (
        "HuggingFaceTB/SmolLM2-135M-Instruct", "finetune", "apache-2.0")
    assert "merged" in card["tags"] and card["lord"]["merged_from"]["method"] == method
    assert (main(["card", str(tmp_path / "dense")]) == 0
            and str(tmp_path) not in (tmp_path / "dense" / "README.md").read_text())
    dense = AutoModelForCausalLM.from_pretrained(tmp_path / "dense")  # no remote code
    assert all(type(m).__name__ not in ("LowRankLinear", "GroupedLowRankLinear") for m in dense.modules())
    with torch.no_grad():
        want = model(probe_ids).logits
        assert torch.allclose(dense(probe_ids).logits, want, rtol=0, atol=1e-4 * want.abs().max().item())


def test_export_refuses_a_bias_the_architecture_cannot_hold_in_one_line(tmp_path, capsys):
    from lord.cli import main

    model, decs = _compressed("codegen", ["attn_qkv"], False, "lord_meanfix")  # CodeGen's qkv_proj has no bias
    save_compressed(model, tmp_path / "m", decs)
    assert main(["export", "--merge", str(tmp_path / "m"), str(tmp_path / "dense")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "transformer.h.0.attn.qkv_proj" in err and "no place for" in err
    assert not (tmp_path / "dense").exists()
    assert main(["export", "--merge", str(tmp_path / "nothing"), str(tmp_path / "dense")]) == 2


# an evaluation as a result file holds it (experiments.run passes this to the card); the timings and the local
# Lib folder must not reach the card
_PERPLEXITY = {"name": "perplexity", "options": {"name": "perplexity", "n_windows": 8},
               "metrics": {"perplexity": 7.3163442460521315, "dense_perplexity": 5.763958377216446,
                           "perplexity_increase_percent": 26.932634957460767, "mean_nll": 1.990110783283312,
                           "n_tokens": 8184, "n_windows": 8, "nll_sum": 16287.07, "seq_len": 1024, "seconds": 37.3,
                           "tokens_per_second": 219.6},
               "data": {"validation": {"name": "stdlib", "split": "validation", "n_files": 324,
                                       "content_sha256":
                                           "f7e99e40e79b58b18178e1c058a0eda07a7cba47244dbfe6feeda95f6a08b644",
                                       "stdlib_root": "/tmp/Lib311", "validation_percent": 50},
                        "calibration": None, "seq_len": 1024, "validation_windows": 8, "min_chars": 10240}}
_HUMANEVAL = {"name": "humaneval", "options": {"name": "humaneval", "preset": "greedy"}, "data": None,
              "metrics": {"n_tasks": 164, "seeds": [0], "execution_s": 14.4, "generation_s": 13.5,
                          "preset": {"name": "greedy", "n": 1, "temperature": 0.0, "max_new_tokens": 384},
                          "pass@1": {"mean": 10.365853658536585, "std": 0.0, "ci_low": 6.1, "ci_high": 15.2,
                                     "per_seed": [10.365853658536585]},
                          "per_task": {"HumanEval/0": {"correct": 0, "n": 1}}}}


@pytest.mark.parametrize("evaluation", [_PERPLEXITY, _HUMANEVAL], ids=["perplexity", "humaneval"])
def test_the_model_card_round_trips_through_huggingface_hub_with_its_metrics(tmp_path, evaluation):
    """The card's header is the Hub's metadata, and huggingface_hub's own parser reads it back: base model and
    relation, task, language, licence, lord's version and commit, and the measured metric with the data it
    was measured on (model-index -> eval_results). Labels are for people, timings and local paths are not
    written, and the dense count is the dense model's (lord_meanfix's added biases are not dense parameters)."""
    from huggingface_hub import ModelCard

    from lord.environment import git_commit, lord_version
    from lord.params import count_parameters

    model, decs = _compressed("llama", ["mlp_down", "attn_out"], False, "lord_meanfix")  # Llama: no biases
    dense = count_parameters(tiny_model("llama"))
    n_params = count_parameters(model)
    save_compressed(model, tmp_path / "m", decs, card={
        "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct", "licence": "Apache-2.0", "licence_id": "apache-2.0",
        "gguf_file_type": "MOSTLY_Q4_1", "method": "lord_meanfix", "evaluation": evaluation,
        "command": "python -m experiments.run model=smollm2-135m", "result": "exp/smollm2-135m/lord/x-1234abcd.json",
        "result_identity": "1234abcd" * 8, "weights": "zoo:smollm2-135m:gguf-sha256:0123"})
    text = (tmp_path / "m" / "README.md").read_text()
    card = ModelCard.load(tmp_path / "m" / "README.md")
    data = card.data.to_dict()
    assert (data["base_model"], data["base_model_relation"]) == ("HuggingFaceTB/SmolLM2-135M-Instruct", "finetune")
    assert (data["pipeline_tag"], data["library_name"], data["language"], data["license"]) == (
        "text-generation", "transformers", ["code"], "apache-2.0")
    assert {"lord", "low-rank", "python"} <= set(data["tags"])
    assert data["lord"]["version"] == lord_version() and data["lord"]["commit"] == git_commit()
    assert data["lord"]["result"] == "exp/smollm2-135m/lord/x-1234abcd.json"
    [result] = card.data.eval_results
    assert result.task_type == "text-generation"
    if evaluation is _PERPLEXITY:
        assert (result.metric_type, result.metric_name) == ("perplexity", "Perplexity")
        assert result.metric_value == evaluation["metrics"]["perplexity"]
        assert (result.dataset_type, result.dataset_split) == ("cpython-stdlib", "validation")
        assert result.dataset_revision == "sha256:" + evaluation["data"]["validation"]["content_sha256"]
        assert result.dataset_args["windows"] == 8 and result.dataset_args["files"] == 324
        assert "| Perplexity | 7.31634 |" in text and "perplexity: perplexity" not in text
    else:
        assert (result.metric_type, result.dataset_type, result.dataset_split) == ("pass@1", "openai_humaneval", "test")
        assert result.metric_value == evaluation["metrics"]["pass@1"]["mean"]
        assert result.dataset_args["tasks"] == 164
        assert "| HumanEval pass@1 (%) | 10.37 (95 % bootstrap interval over tasks 6.10–15.20) |" in text
    for absent in ("seconds", "Seconds", "per_second", "/tmp", str(tmp_path), "stdlib_root", "Lib311"):
        assert absent not in text, absent
    assert f"| parameters | {n_params:,} (dense: {dense:,}; {100 * (1 - n_params / dense):.2f} % removed) |" in text
    assert "`python -m experiments.run model=smollm2-135m`" in text and "MOSTLY_Q4_1" in text
    assert "(`LlamaForCausalLM.from_pretrained(<this folder>)`) cannot be stopped" in text


def test_the_cards_command_keeps_what_changes_numbers_and_no_local_path(tmp_path, monkeypatch):
    from lord.model_card import card_command

    monkeypatch.chdir(tmp_path)
    (tmp_path / "lord").mkdir()  # a folder named like an override's value: the value stays
    (tmp_path / "data").mkdir()
    overrides = ["method=lord", "rank.value=50", f"paths.save_dir={tmp_path}/out", "paths.results_dir=results",
                 "model.name=Qwen/Qwen2.5-Coder-0.5B", f"data.path={tmp_path}/code", "data.calibration_path=data/",
                 "+data.stdlib_root=~/Lib"]
    assert card_command("python -m experiments.run", overrides) == (
        "python -m experiments.run method=lord rank.value=50 model.name=Qwen/Qwen2.5-Coder-0.5B "
        "data.path=<local path> data.calibration_path=<local path> +data.stdlib_root=<local path>")


def test_a_malformed_model_index_is_caught(tmp_path, capsys):
    """huggingface_hub refuses what the Hub would not read: a model-index without the dataset a metric was
    measured on, or eval results without a model name. lord's writer builds the index through it, so it never
    writes one; lord card refuses a card that does not parse, in one line."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    from lord.cli import main

    model, decs = _compressed("llama", ["mlp_down"], False, "svd")
    save_compressed(model, tmp_path / "m", decs, card={"evaluation": _PERPLEXITY})
    ModelCard.load(tmp_path / "m" / "README.md")  # what lord wrote parses
    text = (tmp_path / "m" / "README.md").read_text()
    start, end = text.index("    dataset:"), text.index("    metrics:")
    (tmp_path / "m" / "README.md").write_text(text[:start] + text[end:])  # a result without its dataset
    with pytest.raises(ValueError, match="Invalid `model_index`"):
        ModelCard.load(tmp_path / "m" / "README.md")
    assert main(["card", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "its metadata does not parse" in err
    with pytest.raises(ValueError, match="requires `model_name`"):
        ModelCardData(eval_results=[EvalResult(task_type="text-generation", dataset_type="openai_humaneval",
                                               dataset_name="HumanEval", metric_type="pass@1", metric_value=1.0)])


def test_save_refuses_a_model_whose_code_is_not_in_transformers(tmp_path):
    model, decs = _compressed("llama", ["mlp_down"], False, "svd")
    model.__class__ = type("MyRemoteModel", (type(model),), {"__module__": "transformers_modules.someone.modeling"})
    with pytest.raises(LordError, match="not part of transformers"):
        save_compressed(model, tmp_path / "m", decs)
    assert not (tmp_path / "m").exists()


def _linear_names(model) -> set[str]:
    return {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def test_peft_lora_on_a_loaded_checkpoint_all_linear_and_the_default_reach_every_factor(tmp_path, probe_ids):
    """"all-linear" -- and LoraConfig(task_type="CAUSAL_LM") without target_modules, which peft resolves by
    model_type -- wrap every linear layer but the head: each factor, a group's shared A included, and its
    adapter is live (the members call what sits at the shared A's place); merging gives the adapted model's
    logits and keeps the LoRD structure."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model, decs = _compressed("qwen2", ["all"], True, "lord")
    save_compressed(model, tmp_path / "m", decs)
    load = lambda: AutoModelForCausalLM.from_pretrained(tmp_path / "m", trust_remote_code=True)  # noqa: E731
    every_linear = _linear_names(load()) - {"lm_head"}
    assert any(".lord_shared__" in n for n in every_linear) and any(n.endswith(".B") for n in every_linear)
    default = get_peft_model(load(), LoraConfig(task_type="CAUSAL_LM", r=2))
    assert set(default.base_model.targeted_module_names) == every_linear

    peft_model = get_peft_model(load(), LoraConfig(r=2, target_modules="all-linear"))
    assert set(peft_model.base_model.targeted_module_names) == every_linear
    with torch.no_grad():
        want = model(probe_ids).logits
        assert torch.allclose(peft_model(probe_ids).logits, want, atol=1e-5)  # LoRA starts at zero
        shared = next(m for n, m in peft_model.named_modules()
                      if n.endswith("self_attn.lord_shared__q_proj__k_proj__v_proj"))
        torch.nn.init.normal_(shared.lora_B["default"].weight)  # only the shared A's adapter moves
        adapted = peft_model(probe_ids).logits
    assert not torch.allclose(adapted, want, atol=1e-3)
    merged = peft_model.merge_and_unload()
    with torch.no_grad():
        assert torch.allclose(merged(probe_ids).logits, adapted, atol=1e-4)
    assert [type(m).__name__ for m in merged.modules()] == [type(m).__name__ for m in load().modules()]


def test_peft_base_layer_names_resolve_to_their_factors_through_lora_target_modules(tmp_path, probe_ids):
    """peft matches names only, so a base name ("q_proj") names a decomposed layer it cannot wrap: its error
    names what to use. model.lora_target_modules(names) gives the factors: a group member's B, a decomposed
    layer's two factors, a layer left dense itself; LoRA on them trains."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model, decs = _compressed("qwen2", ["attn_qkv", "mlp_down"], True, "lord")
    save_compressed(model, tmp_path / "m", decs)
    load = lambda: AutoModelForCausalLM.from_pretrained(tmp_path / "m", trust_remote_code=True)  # noqa: E731
    with pytest.raises(ValueError, match=r"model\.lora_target_modules\(names\), or 'all-linear'"):
        get_peft_model(load(), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    hf = load()
    targets = hf.lora_target_modules(["q_proj", "down_proj", "o_proj"])
    blocks = range(len(hf.model.layers))
    assert targets == sorted([f"model.layers.{i}.self_attn.q_proj.B" for i in blocks]
                             + [f"model.layers.{i}.mlp.down_proj.{f}" for i in blocks for f in (0, 1)]
                             + [f"model.layers.{i}.self_attn.o_proj" for i in blocks])  # o_proj was left dense
    peft_model = get_peft_model(hf, LoraConfig(r=2, target_modules=targets))
    assert sorted(peft_model.base_model.targeted_module_names) == targets
    loss = peft_model(probe_ids, labels=probe_ids).loss
    loss.backward()
    trained = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trained and all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in peft_model.named_parameters()
                           if p.requires_grad and "lora_B" in n)
    with pytest.raises(ValueError, match="no module of this model is named 'qproj'"):
        hf.lora_target_modules(["qproj"])


@pytest.mark.slow
def test_lm_eval_reads_the_checkpoint_and_agrees_with_lords_log_likelihood(tmp_path, smollm2, monkeypatch):
    """lm-eval's hf model (trust_remote_code) on a local JSONL task: its rolling log-likelihood of each document
    equals lord's own (the NLL sum of evaluate_perplexity on the same tokens after the same prefix token)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    from lord.perplexity import evaluate_perplexity

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    model, tok, _ = smollm2
    import copy

    model = copy.deepcopy(model)
    rep = compress_model(model, CompressionConfig(method="svd", kinds=["mlp_down"], rank=RankSpec("reduction", 50)),
                         progress=False)
    save_compressed(model, tmp_path / "m", rep["decompositions"], tokenizer=tok)
    docs = ["def add(a, b):\n    return a + b\n", "import os\nprint(os.getcwd())\n"]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "lord_code.yaml").write_text(
        "task: lord_code\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {tmp_path / 'docs.jsonl'}\n"
        "test_split: test\noutput_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
        "metric_list:\n  - metric: word_perplexity\n")
    out = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={tmp_path / 'm'},trust_remote_code=True,"
                                                         "dtype=float32", tasks=["lord_code"], device="cpu",
                                  task_manager=TaskManager(include_path=str(tmp_path / "tasks")), log_samples=True,
                                  batch_size=1)
    theirs = [s["resps"][0][0] for s in sorted(out["samples"]["lord_code"], key=lambda s: s["doc_id"])]
    theirs = [t[0] if isinstance(t, (list, tuple)) else t for t in theirs]
    prefix = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    ours = [-evaluate_perplexity(model, torch.tensor([[prefix] + tok(d, add_special_tokens=False).input_ids]),
                                 progress=False)["nll_sum"] for d in docs]
    assert theirs == pytest.approx(ours, rel=1e-5)


@pytest.mark.parametrize("umask", [0o022, 0o027], ids=["022", "027"])
def test_checkpoint_and_export_folders_respect_the_umask(tmp_path, umask):
    """Every folder and file of a checkpoint and of its export has the mode the umask gives a new one (the
    temporary folder they are written in, and safetensors' files, would otherwise be 0700 and 0600)."""
    from lord.cli import main

    model, decs = _compressed("qwen2", ["all"], True, "lord")
    before = os.umask(umask)
    try:
        save_compressed(model, tmp_path / "m", decs, tokenizer=_word_tokenizer())
        written = [tmp_path / "m"]
        if umask == 0o022:
            assert main(["export", "--merge", str(tmp_path / "m"), str(tmp_path / "dense")]) == 0
            written.append(tmp_path / "dense")
    finally:
        os.umask(before)
    for folder in written:
        paths = [folder, *folder.rglob("*")]
        assert {p.name for p in paths} >= {"model.safetensors", "config.json", "tokenizer.json", "README.md"}
        modes = {p.relative_to(tmp_path): oct(p.stat().st_mode & 0o777) for p in paths}
        want = {p.relative_to(tmp_path): oct((0o777 if p.is_dir() else 0o666) & ~umask) for p in paths}
        assert modes == want

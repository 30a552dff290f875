"""A saved compressed model is a Hugging Face checkpoint: one-call loading with trust_remote_code (and a clear
failure without it), where lord is not installed; a dense export; a model card; lm-eval and peft on it."""

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import calib_batches, tiny_model
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


def test_loading_without_trust_remote_code_fails_and_says_what_to_do(tmp_path):
    from transformers import AutoModelForCausalLM

    model, decs = _compressed("llama", ["mlp_down"], False, "svd")
    save_compressed(model, tmp_path / "m", decs)
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "m")  # the default: asks, and refuses without a terminal
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "m", trust_remote_code=False)


def test_the_checkpoint_loads_where_lord_cannot_be_imported(tmp_path, probe_ids):
    model, decs = _compressed("qwen2", ["all"], True, "lord_meanfix")
    save_compressed(model, tmp_path / "m", decs)
    torch.save(probe_ids, tmp_path / "probe.pt")
    script = (
        "import sys; sys.modules['lord'] = None  # any 'import lord' now fails\n"
        "import torch\n"
        "from transformers import AutoModelForCausalLM\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(tmp_path / 'm')!r}, trust_remote_code=True)\n"
        f"torch.save(m(torch.load({str(tmp_path / 'probe.pt')!r})).logits, {str(tmp_path / 'out.pt')!r})\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_MODULES_CACHE"] = str(tmp_path / "modules")
    p = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    with torch.no_grad():
        assert torch.equal(torch.load(tmp_path / "out.pt"), model(probe_ids).logits)


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
def test_export_merges_into_a_dense_checkpoint_with_the_same_logits(tmp_path, probe_ids, arch, method, target):
    from transformers import AutoModelForCausalLM

    from lord.cli import main

    model, decs = _compressed(arch, ["all"], arch != "gpt2", method)
    save_compressed(model, tmp_path / "m", decs)
    assert main(["export", "--merge", str(tmp_path / "m"), str(tmp_path / "dense")]) == 0
    assert json.loads((tmp_path / "dense" / "config.json").read_text())["model_type"] == target
    assert not (tmp_path / "dense" / "modeling_lord.py").exists()
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


def test_the_model_card_states_structure_parameters_and_measurements(tmp_path):
    model, decs = _compressed("llama", ["mlp_down"], False, "lord")
    n_params = sum(p.numel() for p in model.parameters())
    save_compressed(model, tmp_path / "m", decs, card={
        "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct", "licence": "Apache-2.0", "licence_id": "apache-2.0",
        "gguf_file_type": "MOSTLY_Q4_1", "method": "lord", "metrics": {"perplexity: perplexity": 12.3456},
        "command": "python -m experiments.run model=smollm2-135m"})
    card = (tmp_path / "m" / "README.md").read_text()
    dense_params = n_params - sum(d.lowrank_params for d in decs) + sum(d.dense_params for d in decs)
    for text in ("license: apache-2.0", "base_model: HuggingFaceTB/SmolLM2-135M-Instruct", "MOSTLY_Q4_1",
                 "| method | lord |", "| mlp_down | 2 | 16 |", f"{n_params:,} (dense: {dense_params:,};",
                 "| perplexity: perplexity | 12.35 |", "`python -m experiments.run model=smollm2-135m`",
                 "trust_remote_code=True"):
        assert text in card, text


def test_save_refuses_a_model_whose_code_is_not_in_transformers(tmp_path):
    model, decs = _compressed("llama", ["mlp_down"], False, "svd")
    model.__class__ = type("MyRemoteModel", (type(model),), {"__module__": "transformers_modules.someone.modeling"})
    with pytest.raises(LordError, match="not part of transformers"):
        save_compressed(model, tmp_path / "m", decs)
    assert not (tmp_path / "m").exists()


def test_peft_lora_wraps_the_factors_of_a_loaded_checkpoint(tmp_path, probe_ids):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model, decs = _compressed("qwen2", ["all"], True, "lord")
    save_compressed(model, tmp_path / "m", decs)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "m", trust_remote_code=True)
    peft_model = get_peft_model(hf, LoraConfig(r=2, target_modules=r".*(down_proj\.[01]|lord_shared__.*|\.B)$"))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert trainable > 0
    with torch.no_grad():  # LoRA starts at zero: the output is the loaded model's
        assert torch.allclose(peft_model(probe_ids).logits, model(probe_ids).logits, atol=1e-5)
    loss = peft_model(probe_ids, labels=probe_ids).loss
    loss.backward()
    assert any(p.grad is not None for p in peft_model.parameters() if p.requires_grad)


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

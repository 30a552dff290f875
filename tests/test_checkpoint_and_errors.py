import json

import pytest
import torch

from conftest import calib_batches, tiny_model
from lord.checkpoint import load_compressed, save_compressed
from lord.compress import CompressionConfig, compress_model
from lord.structure import plan
from lord.errors import LordError
from lord.ranks import RankSpec


@pytest.mark.parametrize("arch,kinds,group,method", [
    ("qwen2", ["all"], True, "lord"),
    ("llama", ["mlp_down", "attn_out"], False, "lord_meanfix"),
    ("gpt2", ["all", "embed", "lm_head"], False, "whiten"),  # tied model, Conv1D weights
    ("codegen", ["attn_qkv"], False, "svd"),
])
def test_save_load_gives_identical_logits(tmp_path, probe_ids, arch, kinds, group, method):
    model = tiny_model(arch)
    report = compress_model(model, CompressionConfig(method=method, kinds=kinds, group=group,
                                                     rank=RankSpec("reduction", 50, force=True)),
                            batches=calib_batches(), progress=False)
    save_compressed(model, tmp_path / "m", report["decompositions"])
    loaded, tok = load_compressed(tmp_path / "m")
    assert tok is None
    assert torch.equal(loaded(probe_ids).logits, model(probe_ids).logits)
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert len(config["lord"]["decompositions"]) == len(report["decompositions"])


def test_load_rejects_weights_that_disagree_with_manifest(tmp_path):
    model = tiny_model("llama")
    report = compress_model(model, CompressionConfig(method="svd", kinds=["mlp_down"], rank=RankSpec("rank", 8)),
                            progress=False)
    save_compressed(model, tmp_path / "m", report["decompositions"])
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["lord"]["decompositions"][0]["rank"] = 9
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(LordError, match=r"shape .* but .*config.json \('lord'\) implies"):
        load_compressed(tmp_path / "m")


def test_load_rejects_a_directory_that_is_not_a_lord_checkpoint(tmp_path):
    with pytest.raises(LordError, match="has no config.json"):
        load_compressed(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(LordError, match="model_type 'llama', not 'lord', and there is no lord.json"):
        load_compressed(tmp_path)


@pytest.mark.parametrize("rank,match", [
    (RankSpec("rank", 33, force=True), "exceeds d_min"),
    (RankSpec("param_fraction", 0.001), "resolves to 0"),
    (RankSpec("rank", 31), "adds parameters"),
])
def test_bad_ranks_are_one_line_errors(rank, match):
    with pytest.raises(LordError, match=match) as e:
        plan(tiny_model("llama"), CompressionConfig(kinds=["attn_out"], rank=rank))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("kwargs,match", [
    (dict(unit="rank", value=0), "positive integer"),
    (dict(unit="rank", value=-4), "positive integer"),
    (dict(unit="rank", value=2.5), "positive integer"),
    (dict(unit="rank", value="ten"), "finite number"),
    (dict(unit="reduction", value=100), r"\[0, 100\)"),
    (dict(unit="percent", value=10), "unknown rank unit"),
    (dict(unit="rank", value=8, round_to=0), "round_to"),
])
def test_bad_rank_specs(kwargs, match):
    with pytest.raises(LordError, match=match):
        RankSpec(**kwargs)


def test_unknown_kind_and_method_and_mode():
    model = tiny_model("llama")
    with pytest.raises(LordError, match="unknown layer kind 'mlp_middle'; choose from"):
        plan(model, CompressionConfig(kinds=["mlp_middle"]))
    with pytest.raises(LordError, match="does not exist in this architecture"):
        plan(tiny_model("gpt2"), CompressionConfig(kinds=["mlp_gate"]))
    with pytest.raises(LordError, match="unknown method"):
        CompressionConfig(method="pca")
    with pytest.raises(LordError, match="unknown calibration mode"):
        CompressionConfig(calibration="twice")


def test_empty_selection_and_bad_layer_indices():
    model = tiny_model("llama")
    with pytest.raises(LordError, match="no layer kinds selected"):
        plan(model, CompressionConfig(kinds=[]))
    with pytest.raises(LordError, match="matched no module"):
        plan(model, CompressionConfig(kinds=["mlp_down"], layers=[]))
    with pytest.raises(LordError, match=r"out of range: the model has blocks 0..1"):
        plan(model, CompressionConfig(kinds=["mlp_down"], layers=[5]))


def test_unknown_architecture_lists_linear_modules_and_how_to_map(probe_ids):
    model = tiny_model("llama")
    model.config.model_type = "mystery"
    with pytest.raises(LordError) as e:
        plan(model, CompressionConfig(kinds=["mlp_down"]))
    msg = str(e.value)
    assert "model.layers.{i}.mlp.down_proj" in msg and "the config key architecture" in msg
    assert "compression.architecture" not in msg  # no such key (issue 33): the key is the top-level `architecture`
    # the suggested mapping works
    mapping = {"blocks": "model.layers", "kinds": {"mlp_down": ["mlp.down_proj"]}}
    compress_model(model, CompressionConfig(method="svd", kinds=["mlp_down"], rank=RankSpec("rank", 8),
                                            architecture=mapping), progress=False)
    model(probe_ids)


def test_mapping_that_names_missing_modules_fails_before_work():
    model = tiny_model("llama")
    mapping = {"blocks": "model.layers", "kinds": {"mlp_down": ["mlp.w2"]}}
    with pytest.raises(LordError, match="'model.layers.0.mlp.w2' .* missing"):
        plan(model, CompressionConfig(kinds=["mlp_down"], architecture=mapping))


def test_data_aware_method_without_data_is_an_error():
    with pytest.raises(LordError, match="needs calibration data"):
        compress_model(tiny_model("llama"), CompressionConfig(method="lord", kinds=["mlp_down"],
                                                              rank=RankSpec("rank", 8)), progress=False)

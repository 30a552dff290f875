"""Stages ``prune`` (Wanda, lord/pruning.py) and ``quantize`` (HQQ, lord/quantization.py): each against its own
definition, on dense and LoRD (grouped) tiny models."""

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from conftest import calib_batches, tiny_model
from lord.architectures import block_linears
from lord.compress import Compressor
from lord.errors import LordError
from lord.params import count_parameters
from lord.pruning import PruneSpec, nonzero_parameters, prune_model, wanda_mask
from lord.ranks import RankSpec


def _random_layer(seed=0, d_out=6, d_in=16):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(d_out, d_in, generator=g), torch.rand(d_in, generator=g) * 3


@pytest.mark.parametrize("sparsity", [0.0, 0.25, 0.5, 0.9])
def test_unstructured_mask_zeroes_the_lowest_scores_of_each_row(sparsity):
    W, norms = _random_layer()
    mask = wanda_mask(W, norms, PruneSpec(sparsity))
    score = W.abs() * norms
    k = int(sparsity * W.shape[1])
    assert (mask.sum(1) == k).all()  # the comparison group is the row: every row loses exactly k
    for row, m in zip(score, mask):
        if 0 < k < len(row):
            assert row[m].max() <= row[~m].min()


def test_the_input_norm_enters_the_score():
    W, norms = _random_layer()
    norms[3] = 1e6  # a feature with a huge input norm keeps its weights, however small
    W[:, 3] = 1e-3
    assert not wanda_mask(W, norms, PruneSpec(0.5))[:, 3].any()
    assert wanda_mask(W, torch.ones_like(norms), PruneSpec(0.5))[:, 3].all()  # by magnitude alone it goes


def test_n_of_m_zeroes_the_lowest_n_of_each_group_of_m():
    W, norms = _random_layer(d_in=16)
    mask = wanda_mask(W, norms, PruneSpec(pattern="2:4"))
    groups, score = mask.reshape(6, 4, 4), (W.abs() * norms).reshape(6, 4, 4)
    assert (groups.sum(-1) == 2).all()
    assert (score.masked_fill(~groups, -1).amax(-1) <= score.masked_fill(groups, float("inf")).amin(-1)).all()
    with pytest.raises(LordError, match="not a whole number of groups of 4"):
        wanda_mask(W[:, :14], norms[:14], PruneSpec(pattern="2:4"))


@pytest.mark.parametrize("spec,match", [(PruneSpec(1.0), r"must be a number in \[0, 1\)"),
                                        (PruneSpec(pattern="4:2"), "N:M with 0 < N < M"),
                                        (PruneSpec(pattern="half"), "N:M with 0 < N < M")])
def test_bad_prune_settings_are_one_line_errors(spec, match):
    with pytest.raises(LordError, match=match):
        spec.check()


def _input_norms(model, block, names, batches):
    """``||X_j||_2`` of the named linears of ``block``, from a plain forward of ``model`` (independent code)."""
    sq = {}
    hooks = [block.get_submodule(n).register_forward_hook(
        lambda _m, a, _o, n=n: sq.__setitem__(
            n, sq.get(n, 0) + a[0].reshape(-1, a[0].shape[-1]).double().square().sum(0)))
        for n in names]
    with torch.no_grad():
        for b in batches:
            model(input_ids=b)
    for h in hooks:
        h.remove()
    return {n: v.sqrt() for n, v in sq.items()}


def test_prune_model_matches_wanda_block_by_block():
    """Block 0 is scored on the dense model's inputs; block 1's q/k/v on the inputs that the *pruned* block 0
    produces (Wanda's order), which the pruned model reproduces since they do not depend on block 1's pruning."""
    model, batches = tiny_model("llama"), calib_batches()
    dense = copy.deepcopy(model)
    spec = PruneSpec(0.5)
    record = prune_model(model, batches, spec, progress=False)
    first = ["self_attn.q_proj", "self_attn.k_proj"]
    expected_0 = _input_norms(dense, dense.model.layers[0], first + ["mlp.gate_proj", "mlp.down_proj"], batches)
    expected_1 = _input_norms(model, model.model.layers[1], first, batches)
    one_shot = _input_norms(dense, dense.model.layers[1], first, batches)  # what scoring on dense inputs would use
    assert not torch.allclose(expected_1[first[0]], one_shot[first[0]])
    for i, expected in ((0, expected_0), (1, expected_1)):
        for name, norm in expected.items():
            W0 = dense.model.layers[i].get_submodule(name).weight
            want = W0.masked_fill(wanda_mask(W0, norm, spec), 0)
            assert torch.equal(model.model.layers[i].get_submodule(name).weight, want), (i, name)
    assert record["achieved_sparsity"] == pytest.approx(0.5, abs=0.01)
    # the embeddings and the head are not pruned
    assert torch.equal(model.model.embed_tokens.weight, dense.model.embed_tokens.weight)
    assert nonzero_parameters(model) < nonzero_parameters(dense)


@pytest.mark.slow
def test_pruning_a_grouped_lord_model_prunes_each_factor_once():
    model, batches = tiny_model("qwen2"), calib_batches()
    Compressor(model, kinds=["all"], group=True, batches=batches, progress=False).apply(
        "lord_meanfix", RankSpec("reduction", 25, force=True))
    record = prune_model(model, batches, PruneSpec(pattern="2:4"), progress=False)
    names = [r["name"] for r in record["layers"]]
    assert len(names) == len(set(names))
    shared = [n for n in names if "shared" in n]
    assert shared  # the q/k/v and gate/up bottlenecks are pruned, once each
    for block in model.model.layers:
        for mod in block_linears(block).values():
            assert (mod.weight.reshape(mod.out_features, -1, 4) == 0).sum(-1).ge(2).all()
    assert torch.isfinite(model(input_ids=batches[0]).logits).all()


hqq = pytest.importorskip("hqq")


@pytest.mark.parametrize("grouped", [False, True])
def test_quantized_linears_compute_with_their_dequantized_weights(grouped):
    from lord.quantization import quantize_model, tensor_bytes

    model, batches = tiny_model("qwen2"), calib_batches()
    if grouped:
        Compressor(model, kinds=["all"], group=True, batches=batches, progress=False).apply(
            "lord_meanfix", RankSpec("reduction", 50, force=True))
    params, bytes_before = count_parameters(model), tensor_bytes(model)
    with torch.no_grad():
        before = model(input_ids=batches[0]).logits
    record = quantize_model(model, bits=8, group_size=16, progress=False)
    assert count_parameters(model) == params  # a quantized linear counts as the weights it stands for
    assert record["linear_bytes_after"] < 0.5 * record["linear_bytes_before"]
    assert tensor_bytes(model) < bytes_before
    for block in model.model.layers:
        quantized = [m for m in block.modules() if type(m).__name__ == "QuantizedLinear"]
        assert quantized and not any(isinstance(m, nn.Linear) for m in block.modules())
        x = torch.randn(3, quantized[0].in_features)
        q = quantized[0]
        want = x @ q.dequantize().T.float() + (q.bias if q.bias is not None else 0)
        assert torch.allclose(q(x), want, atol=1e-5)
        for member in (m for m in block.modules() if type(m).__name__ == "GroupedLowRankLinear"):
            assert type(member._shared).__name__ == "QuantizedLinear"  # members use the quantized shared A
    with torch.no_grad():
        after = model(input_ids=batches[0]).logits
    # 8 bits with groups of 16: the model stays close (a loose bound; the per-weight error is ~0.5 %)
    assert float((after - before).norm() / before.norm()) < 0.05
    assert max(r["relative_error"] for r in record["layers"]) < 0.02


def test_quantize_rejects_bad_settings_and_shapes():
    from lord.quantization import check_divisible, check_settings

    with pytest.raises(LordError, match="quantize.bits=5 is not supported"):
        check_settings(5, 64)
    with pytest.raises(LordError, match="multiple of 8"):
        check_settings(4, 20)
    with pytest.raises(LordError, match="not a whole number of groups"):
        check_divisible(tiny_model("llama"), 48)


@pytest.mark.slow
def test_the_presets_quick_points_run_end_to_end_and_reach_the_tables(tmp_path, smollm2):
    """table2_quantization's and fig6_pruning's LoRD points on SmolLM2-135M (quick profile, perplexity): float,
    4-bit and 2:4-pruned -- what each stage records, parameters counted as dense weights, and the analysis tables
    built from the results."""
    import sys

    from analysis.composition import pruning_table, quantization_table
    from analysis.results import load_results
    from experiments.run import run

    sys.path.insert(0, str(Path(__file__).parent))
    from test_experiments import preset_jobs

    line = ["model=smollm2-135m", "profile=quick", "eval=perplexity", f"paths.results_dir={tmp_path}"]
    lord = [c for c in preset_jobs("table2_quantization", line) if c.method.name == "lord_meanfix"
            and c.rank.value == 62.5 and c.quantize.bits == 4]  # the float point and the 4-bit one
    pruned = [c for c in preset_jobs("fig6_pruning", line) if "prune" in c.stages
              and c.method.name == "lord_meanfix" and c.prune.pattern == "2:4"]
    assert len(lord) == 2 and len(pruned) == 1
    results = [run(c) for c in lord + pruned]
    assert all(r["status"] == "ok" for r in results), [r.get("error") for r in results]
    by_name = {Path(r["path"]).parent.parent.name: r for r in results}
    float_run, q4, p24 = (by_name[k] for k in ("lord_meanfix", "lord_meanfix+quantize4bit", "lord_meanfix+prune2of4"))
    assert q4["params"]["compressed"] == float_run["params"]["compressed"]  # counted as the dense weights
    rec = q4["stages"]["quantize"]
    assert rec["model_bytes"] < rec["model_bytes_before"] and 0 < rec["model_bytes_on_disk"]
    assert rec["linear_bytes_after"] < 0.2 * rec["linear_bytes_before"]  # 4 bits + a scale and zero per 64 (fp32)
    assert q4["metrics"]["perplexity"] > float_run["metrics"]["perplexity"]
    prune = p24["stages"]["prune"]
    assert prune["achieved_sparsity"] >= 0.5 and prune["nonzero_params"] < float_run["params"]["compressed"]
    frame, problems = load_results(tmp_path)
    assert not problems
    qt = quantization_table(frame[frame.experiment == "table2_quantization"])
    assert list(qt.weights) == ["float", "4-bit"] and qt["MiB in memory"].notna().all()
    assert qt["blocks' linears MiB"].iloc[1] < 0.2 * qt["blocks' linears MiB"].iloc[0]
    pt = pruning_table(frame[frame.experiment == "fig6_pruning"])
    assert list(pt.pruning) == ["2:4"] and (pt["nonzero params (M)"] < pt["params (M)"]).all()


@pytest.mark.parametrize("overrides,match", [
    (["stages=[calibrate,decompose,quantize]", "+quantize.bits=5"], "quantize.bits=5 is not supported"),
    (["stages=[calibrate,decompose,quantize]", "+quantize.group=64"], r"quantize has unknown key\(s\) \['group'\]"),
    (["stages=[calibrate,decompose,quantize,prune]"], "'quantize' must be the last stage"),
    (["method=lord", "rank.value=30", "stages=[calibrate,decompose,quantize]", "+quantize.group_size=128"],
     "factors at rank 403 have 232128 weights, not a whole number of groups"),
    (["stages=[calibrate,decompose,prune]", "+prune.sparsity=50"], r"must be a number in \[0, 1\)"),
    (["stages=[calibrate,decompose,prune]", "+prune.pattern=2-4"], "N:M with 0 < N < M"),
    (["method=lord", "rank.value=30", "stages=[calibrate,decompose,prune]", "+prune.pattern='2:4'"],
     r"rank\(s\) \[403\] are the inputs of the factors B and not multiples of 4; set rank.round_to=4"),
    (["stages=[calibrate,decompose,prune,lora]"], "'lora' cannot follow 'prune'"),
    (["stages=[calibrate,decompose,lora]", "+lora.data=chat"], "lora.data='chat' is unknown"),
    (["stages=[calibrate,decompose,lora,quantize]", "+lora.steps=-1"], "lora.steps=-1 must be an integer >= 1"),
])
def test_stage_setting_errors_are_config_errors_before_weights_load(tmp_path, monkeypatch, overrides, match):
    import sys

    import experiments.run as run_mod

    sys.path.insert(0, str(Path(__file__).parent))
    from test_experiments import _compose

    monkeypatch.setattr(run_mod, "load_model", lambda *a, **k: pytest.fail("weights were loaded"))
    with pytest.raises(LordError, match=match):
        run_mod.run(_compose(["model=smollm2-135m", "profile=quick", f"paths.results_dir={tmp_path}", *overrides]))
    assert not list(tmp_path.rglob("*.json"))


@pytest.mark.slow
@pytest.mark.parametrize("compressed", [False, True], ids=["dense", "lord-grouped"])
def test_a_quantized_model_saves_packed_and_loads_back_computing_the_same(tmp_path, compressed):
    """A quantized model saved as a LoRD checkpoint stores the packed weights (smaller than the float save), and
    both loaders -- transformers with trust_remote_code, and lord's -- give back a model with identical logits; a
    loaded one saves again; what cannot work is refused in one line."""
    from transformers import AutoModelForCausalLM

    from lord.checkpoint import load_compressed, save_compressed
    from lord.export import export_merged
    from lord.quantization import quantize_model

    model, batches = tiny_model("qwen2"), calib_batches()
    decs = []
    if compressed:
        decs = Compressor(model, kinds=["all"], group=True, batches=batches, progress=False).apply(
            "lord_meanfix", RankSpec("reduction", 50, force=True))["decompositions"]
    save_compressed(model, tmp_path / "float", decs)
    quantize_model(model, bits=4, group_size=16, progress=False)
    save_compressed(model, tmp_path / "q", decs)
    config = json.loads((tmp_path / "q" / "config.json").read_text())
    modules = config["lord"]["quantization"]["modules"]
    assert len(modules) == sum(type(m).__name__ == "QuantizedLinear" for m in model.modules())
    assert {tuple(v.values()) for v in modules.values()} == {(4, 16)}
    from safetensors import safe_open
    with safe_open(str(tmp_path / "q" / "model.safetensors"), framework="pt") as f:
        stored = {k: f.get_slice(k) for k in f.keys()}
        for name in modules:  # packed: 4 bits a weight, no float weight
            shape = stored[f"{name}.shape"][:].tolist()
            assert str(stored[f"{name}.W_q"].get_dtype()) == "U8" and f"{name}.weight" not in stored
            assert torch.Size(stored[f"{name}.W_q"].get_shape()).numel() * 2 == shape[0] * shape[1]

    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "q", trust_remote_code=True)
    ours, _ = load_compressed(tmp_path / "q")
    probe = batches[0]
    with torch.no_grad():
        want = model(input_ids=probe).logits
        assert torch.equal(hf(input_ids=probe).logits, want)
        assert torch.equal(ours(input_ids=probe).logits, want)
    assert count_parameters(ours) == count_parameters(model)
    if compressed:  # group members call the loaded shared A
        members = [m for m in ours.modules() if type(m).__name__ == "GroupedLowRankLinear"]
        assert members and all(type(m._shared).__name__ == "QuantizedLinear" for m in members)
    hf.save_pretrained(tmp_path / "again")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "again", trust_remote_code=True)
    with torch.no_grad():
        assert torch.equal(again(input_ids=probe).logits, want)

    with pytest.raises(LordError, match="HQQ-quantized layers, which load on the CPU only"):
        load_compressed(tmp_path / "q", device="cuda")
    with pytest.raises(LordError, match="cannot export .* HQQ-quantized"):
        export_merged(tmp_path / "q", tmp_path / "merged")
    from safetensors.torch import load_file, save_file
    state = load_file(str(tmp_path / "q" / "model.safetensors"))
    name = next(iter(modules))
    save_file({k: v for k, v in state.items() if k != f"{name}.W_q"}, str(tmp_path / "q" / "model.safetensors"))
    with pytest.raises(LordError, match=f"lacks tensor '{name}.W_q'"):
        load_compressed(tmp_path / "q")

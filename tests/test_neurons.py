"""MLP neuron selection (lord/neurons.py, lord/neuron_selection.py): keeping every neuron reproduces the model, the
refit minimises its objective and the allocation's cost is that objective, the leverage scores are what they say,
one budget counts neurons and ranks, and a checkpoint with smaller MLP layers loads with identical logits."""

import json

import pytest
import torch
import torch.nn.functional as F

from conftest import calib_batches, tiny_model
from lord.calibration import Moments
from lord.compress import Compressor
from lord.errors import LordError
from lord.neuron_selection import NeuronSettings
from lord.neurons import (fit_statistics, kept_neurons, leverage_scores, neuron_order, objective, refit_bias,
                          refit_down, residual_spectrum)
from lord.params import count_parameters
from lord.ranks import RankSpec

MLP = ["mlp_gate", "mlp_up", "mlp_down"]


def _activations(seed=0, n=400, d_ff=24, d_model=6):
    """Correlated, shifted, heavy-tailed samples of h (n x d_ff), a down weight and bias, and their Moments."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d_ff, generator=g, dtype=torch.float64) @ torch.randn(d_ff, d_ff, generator=g,
                                                                           dtype=torch.float64)
    h = h * torch.linspace(0.05, 3, d_ff, dtype=torch.float64) + 0.7
    h[::37] *= 8  # a few large tokens
    W = torch.randn(d_model, d_ff, generator=g, dtype=torch.float64)
    b = torch.randn(d_model, generator=g, dtype=torch.float64)
    m = Moments(d_ff)  # exact float64 sums (Moments.update reduces chunks in float32)
    m.sum_vv, m.sum_v, m.n = h.T @ h, h.sum(0), n
    return h, W, b, m


def _compressor(model, kinds=("all",), seed=1, **kw):
    return Compressor(model, kinds=list(kinds), batches=calib_batches(seed=seed), neurons=NeuronSettings(**kw),
                      reuse_bases=True, progress=False)


def test_leverage_scores_equal_a_direct_computation_and_the_order_is_deterministic():
    _, _, _, m = _activations()
    K, _ = fit_statistics(m, centred=False)
    for ridge in (1e-3, 0.1, 3.0):
        lam = ridge * float(torch.trace(K)) / K.shape[0]
        direct = torch.diagonal(K @ torch.linalg.inv(K + lam * torch.eye(K.shape[0], dtype=K.dtype)))
        torch.testing.assert_close(leverage_scores(K, ridge), direct, rtol=1e-9, atol=1e-12)
        vals, vecs = torch.linalg.eigh(K)  # sum_j V_ij^2 e_j / (e_j + lam)
        torch.testing.assert_close(leverage_scores(K, ridge), (vecs.square() * (vals / (vals + lam))).sum(1),
                                   rtol=1e-8, atol=1e-12)
    # ties keep the lower index first; the kept neurons stay in index order
    assert neuron_order(torch.tensor([0.5, 0.9, 0.5, 0.9, 0.1])).tolist() == [1, 3, 0, 2, 4]
    assert kept_neurons(torch.tensor([3, 1, 0, 2]), 3).tolist() == [0, 1, 3]


@pytest.mark.parametrize("centred", [False, True])
def test_the_refit_minimises_its_objective_and_the_allocations_cost_is_that_minimum(centred):
    h, W, b, m = _activations()
    K, mu = fit_statistics(m, centred)
    order = neuron_order(leverage_scores(K, 0.01))
    g = torch.Generator().manual_seed(5)
    for refit_ridge in (1e-6, 1e-2):
        spectrum = residual_spectrum(W, K, order, refit_ridge)
        tails = spectrum.flip(0).cumsum(0).flip(0)
        for k in (1, 5, 12, 23):
            S = kept_neurons(order, k)
            Wp = refit_down(W, K, S, refit_ridge)
            best = objective(W, Wp, K, S, refit_ridge)
            assert tails[k].item() == pytest.approx(best, rel=1e-9, abs=1e-12)  # the cost is the refit's minimum
            assert best <= objective(W, W[:, S], K, S, refit_ridge)  # no worse than pruning without a refit
            for _ in range(10):  # any nearby map is worse
                nudged = Wp + 1e-3 * Wp.abs().mean() * torch.randn(Wp.shape, generator=g, dtype=torch.float64)
                assert objective(W, nudged, K, S, refit_ridge) >= best
        S = kept_neurons(order, 24)  # every neuron: the layer itself, whatever the ridge
        torch.testing.assert_close(refit_down(W, K, S, refit_ridge), W, rtol=1e-10, atol=1e-12)
    # without a ridge it is the least-squares fit on the samples themselves (centred: with a free offset)
    S = kept_neurons(order, 9)
    Wp = refit_down(W, K, S, 1e-12)
    X = h[:, S] - (h[:, S].mean(0) if centred else 0)
    Y = (h - (h.mean(0) if centred else 0)) @ W.T
    torch.testing.assert_close(Wp, torch.linalg.lstsq(X, Y).solution.T, rtol=1e-6, atol=1e-8)
    if centred:  # the bias keeps the mean output over the samples exactly
        bp = refit_bias(W, Wp, b, mu, S)
        torch.testing.assert_close((h[:, S] @ Wp.T + bp).mean(0), (h @ W.T + b).mean(0), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("arch,overrides", [("qwen2", {}), ("llama", {"mlp_bias": True}), ("starcoder2", {})])
def test_keeping_every_neuron_reproduces_the_logits(arch, overrides, probe_ids):
    model = tiny_model(arch, **overrides)
    with torch.no_grad():
        dense = model(probe_ids).logits
    # a biased MLP fits the centred covariance, whose float32-accumulated statistics of these tiny models (mean^2
    # 5,000 x the variance) are exact to ~1e-8: below a ridge of 0.1 x the mean eigenvalue (~3e-7) it is refused
    for refit_ridge in (0.1, 10.0):
        c = _compressor(model, refit_ridge=refit_ridge)
        assert c.neurons.blocks and not any(set(t.members) & c.neurons.module_names() for t in c.targets)
        c.swap_in_neurons({b.name: b.d_ff for b in c.neurons.blocks})
        assert len(c.resized()) == 2 * len(c.neurons.blocks[0].modules)  # every MLP layer was replaced
        with torch.no_grad():
            assert torch.equal(model(probe_ids).logits, dense)
        c.restore()


def test_a_down_bias_keeps_the_mean_output_over_the_calibration_tokens():
    """llama with mlp_bias: block 0's MLP sees the same inputs before and after (nothing before it changes), so its
    mean output over the calibration tokens is the dense one's, while the outputs themselves change."""
    model = tiny_model("llama", mlp_bias=True)
    c = _compressor(model, kinds=MLP, refit_ridge=0.1)
    assert c.targets == []  # only MLP layers selected: no low-rank target, no moment statistics
    outputs = []

    def outputs_of_block_0():
        h = model.get_submodule("model.layers.0.mlp.down_proj").register_forward_hook(
            lambda _m, _a, out: outputs.append(out.reshape(-1, out.shape[-1]).double()))
        with torch.no_grad():
            for batch in c.batches:
                model(batch)
        h.remove()
        return torch.cat(outputs[-len(c.batches):])

    dense = outputs_of_block_0()
    report = c.apply("whiten", RankSpec("budget", 40, allocation="uniform"))
    assert report["decompositions"] == [] and "model.layers.0.mlp.down_proj" in report["resized"]
    kept = outputs_of_block_0()
    assert not torch.allclose(kept, dense, atol=1e-6)
    torch.testing.assert_close(kept.mean(0), dense.mean(0), rtol=1e-5, atol=1e-6)


def test_the_budget_counts_neurons_with_ranks_and_never_adds_parameters():
    """What the model loses (counted on the model) is what the allocation says it removed: at least the budget,
    within one step of it, no block keeping all its neurons or a rank that adds parameters."""
    from lord.allocation.base import _moves, allowed_parameters
    from lord.methods import get_method

    model = tiny_model("qwen2")
    dense = count_parameters(model)
    c = _compressor(model)
    cands = c._candidates(get_method("whiten"))
    linears = sum(p.numel() for n, p in model.model.layers.named_parameters() if "norm" not in n)
    assert sum(x.dense_params for x in cands) == linears  # every linear layer of the blocks, once
    for criterion, step, percent in [(a, s, p) for a in ("uniform", "greedy", "loss_estimate") for s in (1, 4)
                                     for p in (10, 35)]:
        report = c.apply("whiten", RankSpec("budget", percent, round_to=step, allocation=criterion))
        choice = {x.name: None for x in cands}
        choice.update({d.name: d.rank for d in report["decompositions"]})
        choice.update({b["name"]: b["kept"] for b in c.events["neurons"]["blocks"] if b["kept"] < b["d_ff"]})
        kept = sum(x.kept(choice[x.name]) for x in cands)
        allowed = allowed_parameters(cands, percent)
        assert dense - count_parameters(model) == linears - kept  # counted on the model
        assert kept <= allowed and c.events["allocation"]["removed_percent"] >= percent
        assert any(choice[b.name] is not None for b in c.neurons.blocks)  # neurons were removed
        for x in cands:
            r = choice[x.name]
            assert r is None or (r % step == 0 and x.kept(r) < x.dense_params)
            assert all(added > allowed - kept for _, added, _ in _moves(x, r, step, down=False))  # within one step
        c.restore()
        assert count_parameters(model) == dense


def test_measured_costs_of_a_neuron_block_are_the_models_kl_and_are_measured_once(tmp_path):
    from lord.cache import CompressionCache

    model = tiny_model("qwen2", initializer_range=0.5)
    windows = calib_batches(seed=9, n=1, batch=2, seq=16)[0]
    cache = CompressionCache(tmp_path, "tiny")

    def compressor():
        c = Compressor(model, kinds=["all"], batches=calib_batches(n=4), cache=cache, reuse_bases=True,
                       neurons=NeuronSettings(), progress=False)
        c.sensitivity = {"windows": windows, "grid": [25, 50]}
        return c

    c = compressor()
    c.apply("whiten", RankSpec("budget", 20, allocation="measured"))
    neurons = c.events["neurons"]
    assert neurons["statistics_from_cache"] == 0 and all("measured_kl" in b for b in neurons["blocks"])
    c.restore()
    name = c.neurons.blocks[1].name
    from lord.methods import get_method
    from lord.sensitivity import measure_sensitivities

    cands = c._candidates(get_method("whiten"), {**{t.name: torch.ones(1) for t in c.targets}, **c.neurons.spectra()})
    table, _ = measure_sensitivities(c, get_method("whiten"), [x for x in cands if x.name == name], windows,
                                     [25, 50], 1, None, progress=False)
    with torch.no_grad():
        dense = F.log_softmax(model(input_ids=windows).logits.float(), -1)
        for k, kl in table[name].items():
            c.swap_in_neurons({name: k})
            lp = F.log_softmax(model(input_ids=windows).logits.float(), -1)
            c.restore()
            assert float((dense.exp() * (dense - lp)).sum(-1).mean()) == pytest.approx(kl, rel=1e-4, abs=1e-9)
    second = compressor()  # another budget: the table and the neuron statistics come from the cache
    second.apply("whiten", RankSpec("budget", 30, allocation="measured"))
    assert second.events["sensitivity"]["forward_passes"] == 0
    assert second.events["neurons"]["statistics_from_cache"] == len(second.neurons.blocks)
    first = c.neurons.spectra()  # a cache hit is the same numbers as the miss that wrote it
    assert all(torch.equal(s, first[name]) for name, s in second.neurons.spectra().items())


def test_a_checkpoint_with_smaller_mlps_loads_with_identical_logits_and_exports_when_sizes_agree(tmp_path, probe_ids):
    from transformers import AutoModelForCausalLM

    from lord.checkpoint import load_compressed, save_compressed
    from lord.export import export_merged

    model = tiny_model("llama", mlp_bias=True)
    c = _compressor(model, refit_ridge=0.1)
    report = c.apply("whiten", RankSpec("budget", 30, allocation="uniform"))  # every block keeps the same k
    with torch.no_grad():
        want = model(probe_ids).logits
    save_compressed(model, tmp_path / "ckpt", report["decompositions"])
    lord = json.loads((tmp_path / "ckpt" / "config.json").read_text())["lord"]
    assert lord["resized"] == report["resized"] and report["resized"]
    loaded, _ = load_compressed(tmp_path / "ckpt")
    remote = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt", trust_remote_code=True)
    with torch.no_grad():
        assert torch.equal(loaded(probe_ids).logits, want) and torch.equal(remote(probe_ids).logits, want)
    assert count_parameters(loaded) == count_parameters(model)
    save_compressed(loaded, tmp_path / "again")  # a loaded model re-saves with its sizes
    assert json.loads((tmp_path / "again" / "config.json").read_text())["lord"]["resized"] == lord["resized"]
    dense_count = count_parameters(tiny_model("llama", mlp_bias=True))  # the card counts the dense model right
    assert f"(dense: {dense_count:,};" in (tmp_path / "again" / "README.md").read_text()
    out = export_merged(tmp_path / "ckpt", tmp_path / "dense")
    assert out["max_logit_error_relative"] < 1e-4
    assert json.loads((tmp_path / "dense" / "config.json").read_text())["intermediate_size"] == \
        report["resized"]["model.layers.0.mlp.down_proj"][0]

    report = c.apply("whiten", RankSpec("budget", 30, allocation="greedy"))  # blocks of different sizes
    assert len({v[0] for k, v in report["resized"].items() if k.endswith("down_proj")}) == 2
    save_compressed(model, tmp_path / "mixed", report["decompositions"])
    with pytest.raises(LordError, match="2 different intermediate sizes") as e:
        export_merged(tmp_path / "mixed", tmp_path / "dense2")
    assert "\n" not in str(e.value) and not (tmp_path / "dense2").exists()
    bad = json.loads((tmp_path / "mixed" / "config.json").read_text())
    bad["lord"]["resized"]["model.layers.0.mlp.down_proj"] = [3, "x", False]
    (tmp_path / "mixed" / "config.json").write_text(json.dumps(bad))
    with pytest.raises(LordError, match=r"'resized' must map layer names to \[in_features, out_features, bias\]"):
        load_compressed(tmp_path / "mixed")


def _compose(overrides):
    from hydra import compose, initialize_config_dir

    from test_experiments import CONF

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=overrides)


BUDGET = ["rank.unit=budget", "rank.value=20"]


@pytest.mark.parametrize("overrides,match", [
    (["neurons.enabled=true"], "neurons.enabled=true allocates .* set rank.unit=budget"),
    (["neurons.enabled=true", *BUDGET], "the layer selection lacks mlp_gate, mlp_up; select them all"),
    (["neurons.enabled=true", "layers=all", *BUDGET, "neurons.ridge=0"], r"neurons.ridge=0 must be a number > 0"),
    (["neurons.enabled=true", "layers=all", *BUDGET, "neurons.refit_ridge=-1"], r"neurons.refit_ridge=-1 must be"),
    (["+neurons.keep=3"], r"neurons has unknown key\(s\) \['keep'\]; allowed: enabled, ridge, refit_ridge"),
    (["neurons.enabled=maybe"], "neurons.enabled='maybe' must be true or false"),
    (["neurons.enabled=true", "method=dense"], "choose a decomposing method"),
    (["neurons.enabled=true", "layers=all", "rank.unit=budget", "rank.value=99.9"], "more than this selection can"),
])
def test_bad_neuron_settings_fail_in_one_line_before_weights_load(overrides, match, monkeypatch, tmp_path):
    import experiments.run as run_mod

    monkeypatch.setattr(run_mod, "load_model", lambda *a, **k: pytest.fail("weights were loaded"))
    with pytest.raises(LordError, match=match) as e:
        run_mod.run(_compose(["model=smollm2-135m", "profile=quick", f"paths.results_dir={tmp_path}", *overrides]))
    assert "\n" not in str(e.value) and not list(tmp_path.rglob("*.json"))


def test_neuron_selection_runs_end_to_end_and_records_what_it_chose(tmp_path, smollm2):
    """run(cfg) on SmolLM2 (two blocks, every layer kind, whiten attention + MLP neurons, one budget): the result
    names the setting, records per block the neurons kept and their cost, time and memory; the parameters the model
    lost are the allocation's; the saved checkpoint loads with the compressed model's size; with neuron selection off
    the identity is what it was before the option existed."""
    from omegaconf import OmegaConf

    from experiments.run import run
    from lord.checkpoint import load_compressed
    from lord.identity import numeric_config

    base = ["model=smollm2-135m", "profile=quick", f"paths.results_dir={tmp_path}", "layers=all",
            "layers.indices=[0,1]", "method=whiten", *BUDGET, "rank.allocation=loss_estimate", "eval.n_windows=1"]
    assert "neurons" not in numeric_config(OmegaConf.to_container(_compose(base), resolve=True))
    r = run(_compose([*base, "neurons.enabled=true", f"paths.save_dir={tmp_path / 'saved'}"]))
    assert r["status"] == "ok", r.get("error")
    assert "/whiten-neurons/all.blocks0-1/budget-20-loss_estimate-" in r["path"]
    comp, n = r["compression"], r["compression"]["neurons"]
    assert [b["block"] for b in n["blocks"]] == [0, 1] and n["neurons_kept"] < n["neurons_dense"] == 2 * 1536
    assert all(b["estimated_cost"] >= 0 and b["kept"] <= b["d_ff"] for b in n["blocks"])
    assert n["statistics_from_cache"] == 2 or n["statistics_seconds"] > 0  # gathered, or another run's from the cache
    assert n["selection_seconds"] > 0 and r["stage_memory"]["decompose"]["rss_peak_mib"] > 0
    assert not any("mlp" in d["name"] for d in comp["decompositions"])  # the MLP layers are resized, not decomposed
    removed = r["params"]["dense"] - r["params"]["compressed"]
    assert removed == round(comp["allocation"]["selection_params"] * comp["allocation"]["removed_percent"] / 100)
    assert 20 <= comp["allocation"]["removed_percent"] < 21
    model, _ = load_compressed(tmp_path / "saved", with_tokenizer=False)
    assert count_parameters(model) == r["params"]["compressed"] and model.config.lord["resized"] == n["resized"]


def test_refit_and_anchor_fit_to_the_dense_model_around_smaller_mlps():
    """Their dense stream puts back every module the compressor swapped out, the resized MLPs too: each block's dense
    output there is the dense model's."""
    from lord.calibration import block_inputs
    from lord.refit import _advance_dense

    model = tiny_model("qwen2")
    c = _compressor(model)
    blocks, outputs = model.model.layers, []
    hooks = [b.register_forward_hook(lambda _m, _a, out: outputs.append(out[0] if isinstance(out, tuple) else out))
             for b in blocks]
    with torch.no_grad():
        model(c.batches[0])
    for h in hooks:
        h.remove()
    report = c.apply("whiten", RankSpec("budget", 30, allocation="greedy"))
    assert report["resized"] and report["decompositions"]
    states = block_inputs(model, blocks[0], c.batches[:1], c._device())
    for i, block in enumerate(blocks):
        _advance_dense(model, block, [d for d in report["decompositions"] if d.block == i], c, states)
        args, kwargs = states[0]
        torch.testing.assert_close(args[0] if args else kwargs["hidden_states"], outputs[i])
    assert model.get_submodule("model.layers.0.mlp.down_proj") is not c._dense_module("model.layers.0.mlp.down_proj")


def test_smaller_mlps_alone_are_evaluated_as_a_changed_model(tmp_path, smollm2):
    """Neuron selection with no low-rank target decomposed (here: only the MLP kinds selected, so every removed
    parameter is a neuron) still changes the model: the evaluation runs on it instead of reusing the dense baseline.
    (Found on Qwen2.5-Coder-1.5B at 10 %, where loss_estimate left every attention matrix dense and the result
    reported the dense perplexity.) Stages refit and anchor, with no decomposition to fit, say so in the result
    instead of vanishing from it."""
    from experiments.run import run

    r = run(_compose(["model=smollm2-135m", "profile=quick", f"paths.results_dir={tmp_path}", "layers=all",
                      "layers.kinds=[mlp_gate,mlp_up,mlp_down]", "layers.indices=[0,1]", "method=whiten", *BUDGET,
                      "rank.allocation=loss_estimate", "eval.n_windows=1", "neurons.enabled=true",
                      "stages=[calibrate,decompose,refit,anchor]", "calibration.batch_size=1"]))
    assert r["status"] == "ok", r.get("error")
    assert r["compression"]["decompositions"] == [] and r["compression"]["neurons"]["resized"]
    for stage in ("refit", "anchor"):
        assert r["stages"][stage]["targets"] == [] and "no layer was decomposed" in r["stages"][stage]["skipped"]
    assert r["params"]["compressed"] < r["params"]["dense"]
    assert r["metrics"]["perplexity"] != r["metrics"]["dense_perplexity"]

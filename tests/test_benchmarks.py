"""The GPU benchmark scripts, run on the CPU with tiny configs: their sizes follow the closed form, the dense model
is restored between ranks, and the CUDA check's own criteria hold where the maths says they must."""

import json
import sys

import pytest
import torch

from analysis import figures
from analysis.results import load_speed_benchmarks
from conftest import TINY_CONFIGS
from experiments.benchmarks import common, cuda_check, speed_from_config

N_EMBD, N_INNER, N_LAYER = 32, 128, 2


@pytest.mark.slow
def test_speed_from_config_sizes_restores_and_feeds_fig3(tmp_path, monkeypatch):
    config = dict(TINY_CONFIGS["gpt_bigcode"], model_type="gpt_bigcode", n_embd=N_EMBD, n_inner=N_INNER,
                  n_layer=N_LAYER, n_positions=1024)
    (tmp_path / "config.json").write_text(json.dumps(config))
    monkeypatch.setattr(common, "OUT_DIR", tmp_path)
    monkeypatch.setattr(sys, "argv", ["speed_from_config", "--model", str(tmp_path / "config.json"), "--device",
                                      "cpu", "--dtype", "float32", "--reductions", "0", "50", "--runs", "2",
                                      "--warmup", "1", "--seq-lens", "16", "32", "--decode-tokens", "2",
                                      "--time-compression", "2"])
    speed_from_config.main()
    out = json.loads(next(tmp_path.glob("speed-from-config-*-cpu-float32.json")).read_text())
    dense = out["dense_params"]
    for row, rank in zip(out["per_rank"], (N_EMBD, N_EMBD // 2)):
        assert row["ranks"] == [rank]  # MLP-down is N_INNER -> N_EMBD: full rank N_EMBD
        expected = dense - N_LAYER * N_INNER * N_EMBD + N_LAYER * rank * (N_INNER + N_EMBD)
        assert row["n_params"] == expected and row["relative_size_params"] == pytest.approx(expected / dense)
        assert row["dense"]["n_params"] == dense  # measured after restoring: the dense model came back intact
    assert out["compression_time"]["calibration_s"] > 0 and out["compression_time"]["decomposition_s"] > 0

    frame, problems = load_speed_benchmarks(tmp_path)
    assert problems == []
    assert list(frame.rank_value) == [0, 50] and frame["eval"].eq("speed").all()
    assert list(frame.relative_time_512.isna()) == [True, True]  # not measured: left empty, not invented
    written = figures.fig3(frame, tmp_path / "fig3")
    assert all(p.stat().st_size > 10_000 for p in written)


@pytest.mark.slow
def test_cuda_check_criteria_hold_on_the_cpu():
    """On one device the statistics agree exactly; with enough calibration tokens (the default) full rank
    reproduces the logits and the error falls as the rank grows -- the same criteria the GPU run must meet."""
    from transformers import AutoConfig

    config = AutoConfig.for_model("qwen2", **TINY_CONFIGS["qwen2"])
    r = cuda_check.check(config, blocks=2, device=torch.device("cpu"), n_windows=None, seq_len=32)
    assert r["calibration_tokens"] >= 2 * TINY_CONFIGS["qwen2"]["intermediate_size"]
    assert r["stats_rel_diff"] == 0.0 and r["perplexity_gpu_vs_cpu"]["rel_diff"] == 0.0
    assert max(r["full_rank_rel_err"].values()) < cuda_check.TOL["full_rank_rel_err"]
    assert r["error_falls_with_rank"] and r["checkpoint_max_abs_diff"] == 0.0 and r["ok"]


@pytest.mark.gpu
def test_cuda_check_criteria_hold_on_the_gpu():
    """The same algebra on CUDA, measured against the CPU within cuda_check's own tolerances (statistics,
    full-rank logits, error falling with rank, perplexity, a checkpoint reloaded onto the GPU, bfloat16)."""
    from transformers import AutoConfig

    config = AutoConfig.for_model("qwen2", **TINY_CONFIGS["qwen2"])
    r = cuda_check.check(config, blocks=2, device=torch.device("cuda"), n_windows=None, seq_len=32)
    assert r["ok"], {k: v for k, v in r.items() if k != "error_by_reduction"}


def test_first_position_shares_equal_those_of_the_captured_outputs():
    """The first-position measurements, from statistics differences, equal a direct computation on the captured
    outputs z = W x of every target (input side: q/k/v grouped; output side: MLP-down)."""
    from conftest import calib_batches, tiny_model

    from experiments.benchmarks.first_position import target_row
    from lord.calibration import collect_statistics_per_skip
    from lord.compress import Compressor
    from lord.methods import get_method
    from lord.structure import dense_W_b

    model = tiny_model("qwen2")
    batches = calib_batches(n=2, batch=3, seq=16)
    targets = Compressor(model, ["attn_qkv", "mlp_down"], group=True, progress=False).targets
    stats = collect_statistics_per_skip(model, targets, batches, [0, 1, 4], "model.layers", progress=False)
    for t in targets:
        W, b = dense_W_b(model, t.members)
        captured = []
        mod = model.get_submodule(t.members[0])
        h = mod.register_forward_hook(lambda _m, a, _o: captured.append(a[0].detach().double()))
        with torch.no_grad():
            for x in batches:
                model(input_ids=x)
        h.remove()
        z = torch.cat(captured) @ W.T  # (windows, positions, d_out), without bias
        flat = z.reshape(-1, z.shape[-1])
        mean = flat.mean(0)
        expected = (z[:, 0] - mean).square().sum() / (flat - mean).square().sum()
        row = target_row(model, t, stats, get_method("lord_meanfix"), {50: max(1, W.shape[0] // 4)})
        assert row["first_positions"] == 6 and row["positions"] == 96
        assert row["share_scatter"] == pytest.approx(float(expected), rel=1e-5)
        assert row["share_second_moment"] == pytest.approx(float(z[:, 0].square().sum() / flat.square().sum()),
                                                           rel=1e-5)
        rest = z[:, 1:].reshape(-1, z.shape[-1]).mean(0)
        assert row["mean_shift"] == pytest.approx(float((mean - rest).norm() / rest.norm()), rel=1e-5)
        assert 0 <= row["overlap_4_at_50"] <= 1 + 1e-9


def test_spectra_energy_kept_is_one_minus_the_truncation_error():
    """Weights: 1 - kept = ||W - W_r||_F^2 / ||W||_F^2 of the truncated SVD; outputs: 1 - kept = the discarded
    share of the eigenvalues of the output covariance W C W^T, formed here directly (tiny dims)."""
    from conftest import calib_batches, tiny_model

    from experiments.benchmarks.spectra import target_spectra
    from lord.calibration import stat_slot
    from lord.compress import Compressor
    from lord.methods import get_method
    from lord.structure import dense_W_b

    model = tiny_model("qwen2")
    c = Compressor(model, ["all"], group=True, batches=calib_batches(n=2, batch=4, seq=32), progress=False)
    for t in c.targets:
        W, _ = dense_W_b(model, t.members)
        r = max(1, min(W.shape) // 3)
        row = target_spectra(c, t, get_method("lord_meanfix"), {30: r})
        U, S, Vh = torch.linalg.svd(W, full_matrices=False)
        W_r = U[:, :r] @ torch.diag(S[:r]) @ Vh[:r]
        assert 1 - row["weight_energy_kept_30"] == pytest.approx(float((W - W_r).square().sum() / W.square().sum()),
                                                                 rel=1e-6, abs=1e-12)
        slot = stat_slot(model, t)
        C = c.statistics[slot.key].covariance()
        out_cov = C if slot.side == "output" else W @ C @ W.T
        lam = torch.linalg.eigvalsh(out_cov).flip(0).clamp_min(0)
        assert row["output_energy_kept_30"] == pytest.approx(float(lam[:r].sum() / lam.sum()), rel=1e-6)
        assert 0 < row["output_rank_99"] <= 100


def test_spectra_first_position_and_swiglu_figures_are_drawn_from_their_json(tmp_path):
    rows = [{"kind": k, "block": b, "share_scatter": 0.01 * (b + 1), "output_energy_kept_10": 0.9,
             "weight_energy_kept_10": 0.95} for k in ("mlp_down", "attn_out") for b in range(3)]
    paths = figures.spectra({"model": "m", "reductions": [10], "per_target": rows}, tmp_path / "spectra-m")
    paths += figures.first_position({"model": "m", "seq_len": 1024, "per_target": rows}, tmp_path / "first-position-m")
    blocks = [{"method": m, "reduction": red, "block": b, "rel_err_h": 0.1, "rel_err_gate": 0.05, "rel_err_up": 0.07}
              for m in ("whiten", "lord_meanfix") for red in (10, 30) for b in range(3)]
    paths += figures.swiglu({"model": "m", "reductions": [10, 30], "methods": ["lord_meanfix", "whiten"],
                             "per_block": blocks}, tmp_path / "swiglu-m")
    assert all(p.stat().st_size > 10_000 for p in paths)


@pytest.mark.parametrize("args,message", [
    (["--skip", "-1"], "argument --skip: '-1' must be a positive integer"),
    (["--skip", "1024"], "argument --skip: 1024 leaves no position of a 1024-token window"),
    (["--reductions", "150"], "argument --reductions: '150' must be a % rank reduction in [0, 100)"),
    (["--windows", "0"], "argument --windows: '0' must be a positive integer"),
])
def test_benchmark_arguments_are_refused_before_any_model_loads(args, message, monkeypatch, capsys):
    from experiments.benchmarks import first_position

    monkeypatch.setattr(first_position, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    monkeypatch.setattr(sys, "argv", ["first_position", *args])
    with pytest.raises(SystemExit) as e:
        first_position.main()
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_swiglu_errors_follow_from_which_projection_is_wrong():
    """By hand: exact projections give zero error; up doubled gives h doubled (error 1, all of it from up,
    none from gate); a full-rank whiten decomposition of a tiny gated MLP reproduces h."""
    import torch.nn.functional as F
    from conftest import calib_batches, tiny_model

    from experiments.benchmarks.swiglu import block_errors, mlp_inputs
    from lord.compress import Compressor
    from lord.ranks import RankSpec

    torch.manual_seed(0)
    gate, up, down = torch.nn.Linear(8, 16), torch.nn.Linear(8, 16), torch.nn.Linear(16, 8)
    x = torch.randn(64, 8)
    exact = block_errors(F.silu, gate, up, down, gate, up, x)
    assert exact.pop("amplification") is None and all(v == 0 for v in exact.values())
    doubled = block_errors(F.silu, gate, lambda v: 2 * up(v), down, gate, up, x)
    assert doubled["rel_err_up"] == pytest.approx(1) and doubled["rel_err_h"] == pytest.approx(1)
    assert doubled["rel_err_h_up_only"] == pytest.approx(1) and doubled["rel_err_h_gate_only"] == 0
    model = tiny_model("llama")
    blocks = list(model.model.layers)
    xs = mlp_inputs(model, blocks, "mlp.gate_proj", calib_batches(n=1, batch=2, seq=16)[0])
    dense = [(b.mlp.gate_proj, b.mlp.up_proj) for b in blocks]
    Compressor(model, ["mlp_gate", "mlp_up"], batches=calib_batches(), progress=False).apply(
        "whiten", RankSpec("reduction", 0, force=True))
    for b, (g, u), x in zip(blocks, dense, xs):
        assert x.shape[0] == 32 and b.mlp.gate_proj is not g
        err = block_errors(b.mlp.act_fn, b.mlp.gate_proj, b.mlp.up_proj, b.mlp.down_proj, g, u, x)
        assert err["rel_err_h"] < 1e-4 and err["rel_err_out"] < 1e-4


def test_position_errors_split_the_error_between_the_first_position_and_the_rest():
    """By hand: an error on position 0 only is all 'first'; the compressed module applied to the dense model's
    own input reproduces it at full rank (whiten is exact there)."""
    from conftest import calib_batches, tiny_model

    from experiments.benchmarks.position_errors import member_inputs, position_errors
    from lord.compress import Compressor
    from lord.ranks import RankSpec

    dense = torch.ones(2, 3, 4)
    off = dense.clone()
    off[:, 0] += 0.5
    e = position_errors(dense, off)
    assert e["share_first"] == 1 and e["rel_err_rest"] == 0 and e["rel_err_first"] == pytest.approx(0.5)
    model = tiny_model("qwen2")
    c = Compressor(model, ["mlp_down", "attn_qkv"], batches=calib_batches(), progress=False)
    members = [m for t in c.targets for m in t.members]
    inputs = member_inputs(model, members, calib_batches(n=1, batch=2, seq=16)[0])
    with torch.no_grad():
        ref = {m: model.get_submodule(m)(x) for m, x in inputs.items()}
        c.apply("whiten", RankSpec("reduction", 0, force=True))
        for m, x in inputs.items():
            assert x.shape[:2] == (2, 16)
            err = position_errors(ref[m], model.get_submodule(m)(x))
            assert err["rel_err_first"] < 1e-4 and err["rel_err_rest"] < 1e-4


def test_hqq_sensitivity_is_deterministic_and_within_the_triangle_bound(tmp_path, monkeypatch):
    """Quantizing the same matrix twice gives the same weights; a perturbed matrix's quantization is never farther
    from the original's than the two quantization errors plus the perturbation (triangle inequality)."""
    pytest.importorskip("hqq")
    from experiments.benchmarks import hqq_sensitivity

    W = torch.randn(32, 128, generator=torch.Generator().manual_seed(1))
    assert torch.equal(hqq_sensitivity.dequantized(W, 4, 64, True), hqq_sensitivity.dequantized(W, 4, 64, True))
    monkeypatch.setattr(common, "OUT_DIR", tmp_path)
    monkeypatch.setattr(sys, "argv", ["hqq_sensitivity", "--rows", "32", "--cols", "128"])
    hqq_sensitivity.main()
    rows = json.loads((tmp_path / "hqq-sensitivity.json").read_text())["rows"]
    assert len(rows) == 2 * 2 * len(hqq_sensitivity.EPSILONS)
    for r in rows:  # ||W - W'|| <= eps * max|noise| * ||W|| < 6 eps ||W|| for 4,096 Gaussian draws
        assert 0 <= r["difference"] <= 2.01 * r["quantization_error"] + 6 * r["epsilon"]


@pytest.mark.slow
def test_humaneval_throughput_sampled_mode_runs_its_three_modes_into_one_json(tmp_path, monkeypatch, smollm2):
    """One sample at a time, continuous, continuous with shared prefills: in float64 the same samples (no
    near-tie for rounding to flip), with one prefill per task when shared."""
    from transformers import AutoConfig

    from experiments.benchmarks import humaneval_throughput
    from lord.models import random_model

    _, tok, _ = smollm2
    tiny = random_model(AutoConfig.for_model("llama", **{**TINY_CONFIGS["llama"], "vocab_size": len(tok)}),
                        dtype=torch.float64)
    with torch.no_grad():
        tiny.lm_head.weight.mul_(20)  # a few tokens in the nucleus, as a trained model has at T = 0.2
    monkeypatch.setattr(humaneval_throughput, "load_model", lambda name: (tiny, tok, {}))
    monkeypatch.setattr(common, "OUT_DIR", tmp_path)
    monkeypatch.setattr(sys, "argv", ["humaneval_throughput", "--model", "tiny", "--mode", "sampled", "--problems",
                                      "2", "--samples", "3", "--max-new-tokens", "5", "--widths", "1", "2", "4"])
    humaneval_throughput.main()
    out = json.loads((tmp_path / "humaneval-throughput-sampled-tiny-2x3.json").read_text())
    runs = out["runs"]
    assert list(runs) == ["one_at_a_time", "continuous", "continuous_shared"]
    assert set(out["decode_step_ms_by_rows"]) == {"1", "2", "4"} and out["width_chosen"]["queue"] == 6
    assert runs["continuous"]["batch_size"] == out["width_chosen"]["batch_size"] == runs["continuous_shared"][
        "batch_size"]
    assert [runs[m]["prefills"] for m in runs] == [6, 6, 2] and runs["continuous_shared"]["shared_rows"] == 4
    assert all(r["samples"] == 6 and r["samples_per_s"] > 0 for r in runs.values())
    assert runs["one_at_a_time"]["speedup_over_one_at_a_time"] == 1.0
    assert all(r["samples_equal_to_one_at_a_time"] == 6 for r in runs.values())
    assert out["near_tie_flips"] == {"samples_differing_shared_vs_unshared": 0, "samples": 6, "fraction": 0.0}


def test_humaneval_throughput_refuses_a_bad_width_before_any_model_loads(monkeypatch, capsys):
    from experiments.benchmarks import humaneval_throughput

    monkeypatch.setattr(humaneval_throughput, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    monkeypatch.setattr(sys, "argv", ["humaneval_throughput", "--batch-size", "wide"])
    with pytest.raises(SystemExit) as e:
        humaneval_throughput.main()
    assert e.value.code == 2 and "argument --batch-size: 'wide' must be a positive integer" in capsys.readouterr().err

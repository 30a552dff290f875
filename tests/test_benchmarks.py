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

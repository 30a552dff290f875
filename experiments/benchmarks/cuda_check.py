"""Check the library's CUDA paths against its CPU paths on real architectures (random weights, few blocks).

    python -m experiments.benchmarks.cuda_check                       # shipped paper configs
    python -m experiments.benchmarks.cuda_check --configs path/to/config.json ...

The test suite runs on the CPU; this script runs the same algebra on a GPU and reports, per architecture:

* ``stats_rel_diff``: calibration statistics (output second moments) collected on the GPU vs on the CPU from
  the same float32 model and windows (float32 products accumulated in float64: expect ~1e-6);
* ``full_rank_rel_err``: logits of ``svd``/``whiten``/``lord_meanfix`` at full rank on every layer vs the
  dense model, both on the GPU (the maths says equal once the calibration vectors span every direction,
  hence by default twice the widest layer's input or output dimension in tokens; float32 rounding only);
* ``error_by_reduction``: ``lord_meanfix`` logits error at 75/50/25/0 % rank reduction (must fall);
* ``perplexity_gpu_vs_cpu``: the corpus perplexity of one compressed model evaluated on both devices;
* ``checkpoint_max_abs_diff``: a compressed model saved, reloaded onto the GPU with ``strict=True``;
* ``sequential_ppl`` and ``bfloat16_full_rank_rel_err``: the sequential calibration mode and a bfloat16 model.

``ok`` is true when every check is within its stated tolerance. Writes results/benchmarks/cuda-check.json.
Windows are random token ids: the checks are algebraic and do not need real text.

Time: minutes on one GPU, estimated (the H100 run recorded no total)
"""

from __future__ import annotations

import copy
import tempfile
import time

import torch

from experiments.benchmarks.common import log, parser, write
from experiments.cli import guarded
from lord.calibration import target_shape
from lord.checkpoint import load_compressed, save_compressed
from lord.compress import CompressionConfig, Compressor, compress_model
from lord.errors import LordError
from lord.models import random_model
from lord.params import load_config, paper_model_configs
from lord.perplexity import evaluate_perplexity
from lord.ranks import RankSpec

DEFAULT_CONFIGS = ["Salesforce/codegen-350M-mono", "bigcode/starcoderbase-3b"]
TOL = {"stats_rel_diff": 1e-5, "full_rank_rel_err": 1e-4, "perplexity_rel_diff": 1e-4,
       "checkpoint_max_abs_diff": 0.0, "bfloat16_full_rank_rel_err": 5e-2}


def _model(config, blocks: int, device, dtype=torch.float32):
    """The same random weights on every device: drawn on the CPU in float32 (non-zero biases), then moved."""
    return random_model(config, blocks=blocks, bias_std=0.1).to(device=device, dtype=dtype)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def _compressed(model, method, reduction, batches, calibration="oneshot"):
    m = copy.deepcopy(model)
    cfg = CompressionConfig(method=method, kinds=["all"], rank=RankSpec("reduction", reduction, force=True),
                            calibration=calibration)
    report = compress_model(m, cfg, batches=batches, progress=False)
    return m, report


@torch.inference_mode()
def check(config, blocks: int, device, n_windows: int | None, seq_len: int) -> dict:
    cpu_model, model = _model(config, blocks, "cpu"), _model(config, blocks, device)
    targets = Compressor(model, ["all"], progress=False).targets
    if n_windows is None:  # full rank is exact only if the calibration outputs span every output direction
        widest = max(max(d_in, sum(d_outs)) for d_in, d_outs in (target_shape(model, t) for t in targets))
        n_windows = -(-2 * widest // seq_len)
    g = torch.Generator().manual_seed(1)
    windows = torch.randint(0, config.vocab_size, (n_windows, seq_len), generator=g)
    batches = list(windows.split(4))
    probe = torch.randint(0, config.vocab_size, (2, seq_len), generator=g).to(device)
    out: dict = {"model_type": config.model_type, "blocks": blocks, "calibration_tokens": windows.numel()}
    t = time.perf_counter()
    gpu_stats = Compressor(model, ["all"], batches=batches, progress=False).statistics
    out["calibration_s"] = time.perf_counter() - t
    cpu_stats = Compressor(cpu_model, ["all"], batches=batches, progress=False).statistics
    out["stats_rel_diff"] = max(_rel(gpu_stats[k].sum_vv.cpu(), cpu_stats[k].sum_vv) for k in cpu_stats)

    ref = model(probe).logits
    out["full_rank_rel_err"] = {m: _rel(_compressed(model, m, 0, batches)[0](probe).logits, ref)
                                for m in ("svd", "whiten", "lord_meanfix")}
    out["error_by_reduction"] = {red: _rel(_compressed(model, "lord_meanfix", red, batches)[0](probe).logits, ref)
                                 for red in (75, 50, 25, 0)}
    errs = list(out["error_by_reduction"].values())
    out["error_falls_with_rank"] = all(a >= b for a, b in zip(errs, errs[1:]))

    half, report = _compressed(model, "lord", 50, batches)
    held_out = torch.randint(0, config.vocab_size, (4, seq_len), generator=g)
    ppl_gpu = evaluate_perplexity(half, held_out, progress=False)["perplexity"]
    ppl_cpu = evaluate_perplexity(copy.deepcopy(half).cpu(), held_out, progress=False)["perplexity"]
    out["perplexity_gpu_vs_cpu"] = {"gpu": ppl_gpu, "cpu": ppl_cpu, "rel_diff": abs(ppl_gpu / ppl_cpu - 1)}
    with tempfile.TemporaryDirectory() as d:
        save_compressed(half, d, report["decompositions"])
        back, _ = load_compressed(d, device=device, with_tokenizer=False)
        out["checkpoint_max_abs_diff"] = (back(probe).logits - half(probe).logits).abs().max().item()

    seq, _ = _compressed(model, "lord", 50, batches, calibration="sequential")
    out["sequential_ppl"] = evaluate_perplexity(seq, held_out, progress=False)["perplexity"]
    bf16 = _model(config, blocks, device, torch.bfloat16)
    bf16_full, _ = _compressed(bf16, "lord_meanfix", 0, batches)
    out["bfloat16_full_rank_rel_err"] = _rel(bf16_full(probe).logits, bf16(probe).logits)

    out["ok"] = bool(out["stats_rel_diff"] <= TOL["stats_rel_diff"]
                     and max(out["full_rank_rel_err"].values()) <= TOL["full_rank_rel_err"]
                     and out["error_falls_with_rank"]
                     and out["perplexity_gpu_vs_cpu"]["rel_diff"] <= TOL["perplexity_rel_diff"]
                     and out["checkpoint_max_abs_diff"] <= TOL["checkpoint_max_abs_diff"]
                     and out["bfloat16_full_rank_rel_err"] <= TOL["bfloat16_full_rank_rel_err"])
    return out


def main():
    ap = parser(__doc__, model=None)
    ap.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS,
                    help=f"shipped ids ({', '.join(paper_model_configs())}) or config.json paths")
    ap.add_argument("--blocks", type=int, default=2, help="transformer blocks kept from each config")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--windows", type=int, default=None,
                    help="calibration windows (default: twice the widest layer's input or output dimension, in tokens)")
    ap.add_argument("--seq-len", type=int, default=128)
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise LordError("no CUDA device: run this on a machine with a GPU, or pass --device cpu to check the script")
    results = {}
    for name in args.configs:
        results[name] = check(load_config(name), args.blocks, torch.device(args.device), args.windows, args.seq_len)
        log.info("%s %s", name, results[name])
    write("cuda-check", {"device": args.device, "tolerances": TOL, "blocks": args.blocks,
                         "windows": [args.windows, args.seq_len], "all_ok": all(r["ok"] for r in results.values()),
                         "per_config": results})


if __name__ == "__main__":
    guarded(main)

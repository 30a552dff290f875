"""Figure 3 at the paper's scale without its weights: speed and size of a model built from its architecture
config with random weights, dense vs one layer kind decomposed, at the paper's ranks.

    python -m experiments.benchmarks.speed_from_config --model bigcode/starcoder --device cuda --dtype float16

Speed does not depend on the values in the matrices (dense cuBLAS/BLAS kernels; no sparsity is exploited), so
a random StarCoder-16B times like the real one; this lets a GPU with no network (and no 32 GB download)
measure the paper's Figure 3 setting: MLP-down of StarCoder decomposed at ranks 6144 (full) down to 2304,
forward passes of 512 and 1,024 tokens (3 warm-up + 10 timed runs, mean), plus greedy decode tokens/s.
The factors are random too (``nn.Linear`` initialisation). After one discarded warm-up pass, every rank is
measured right after the same dense model (restored between ranks), so slow drift cancels in the ratios.
``--model`` takes a shipped paper config (``lord/model_configs``) or a config.json.
Writes results/benchmarks/speed-from-config-<model>-<device>-<dtype>.json.

Time: 93 s on one H100, measured (StarCoder-16B, float16, --time-compression 128)
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from experiments.benchmarks.common import log, parser, reduction, write
from experiments.cli import guarded
from lord import speed
from lord.compress import CompressionConfig, Compressor
from lord.environment import pick_device
from lord.errors import LordError
from lord.models import random_model, resolve_dtype
from lord.params import count_parameters, load_config
from lord.ranks import RankSpec
from lord.structure import apply_structure, plan, set_module

# StarCoder's MLP-down is 24576 -> 6144: the paper's Figure 3 ranks 6144, 4480, 4096, 3584, 3072, 2560, 2304
PAPER_REDUCTIONS = [0, 27.08, 33.33, 41.67, 50, 58.33, 62.5]


def decompose(model, cfg: CompressionConfig):
    """Swap the targets for random low-rank modules; returns (decompositions, a function that restores them)."""
    decs = [d for _, d in plan(model, cfg)]
    if any(len(d.members) > 1 or d.kind in ("embed", "lm_head") for d in decs):
        raise LordError("speed_from_config decomposes ungrouped block layers only: drop --group, the embedding "
                        "and the LM head from --kinds (e.g. --kinds mlp_down)")
    originals = {d.members[0]: model.get_submodule(d.members[0]) for d in decs}
    apply_structure(model, decs)

    def restore():
        for name, mod in originals.items():
            set_module(model, name, mod)

    return decs, restore


def main():
    ap = parser(__doc__, model=None)
    ap.add_argument("--model", default="bigcode/starcoder", help="a shipped paper config id or a config.json")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="float16", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--kinds", nargs="+", default=["mlp_down"])
    ap.add_argument("--reductions", nargs="+", type=reduction, default=PAPER_REDUCTIONS)
    ap.add_argument("--seq-lens", nargs="+", type=int, default=[512, 1024])
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--time-compression", type=int, default=0, metavar="WINDOWS",
                    help="also time LoRD (calibration + decomposition) at the first nonzero reduction on this many "
                         "random 1,024-token windows (the paper profile calibrates on 128)")
    ap.add_argument("--layers", type=int, default=None, help="keep only the first N blocks (a smaller, faster probe)")
    args = ap.parse_args()
    device, dtype = torch.device(pick_device(args.device)), resolve_dtype(args.dtype)
    if args.time_compression and not any(r > 0 for r in args.reductions):
        raise LordError("--time-compression times the first nonzero reduction: add one to --reductions (e.g. 27.08)")
    config = load_config(args.model)
    t = time.perf_counter()
    model = random_model(config, device=device, dtype=dtype, blocks=args.layers)
    init_s = time.perf_counter() - t
    dense_params = count_parameters(model)
    measure = dict(seq_lens=args.seq_lens, warmup=args.warmup, runs=args.runs, decode_tokens=args.decode_tokens,
                   on_disk=False)  # size from the parameter count: saving 31 GB per measurement would dominate
    speed.measure(model, **measure)  # discarded: the first pass pays for kernel selection and allocator growth
    rows = []
    for red in args.reductions:  # the dense model is measured again next to every rank: drift cancels out
        dense = speed.measure(model, **measure)
        cfg = CompressionConfig(method="svd", kinds=args.kinds, rank=RankSpec("reduction", red, force=True))
        decs, restore = decompose(model, cfg)
        comp = speed.measure(model, **measure, decompositions=decs)
        rel = speed.relative(dense, comp)
        restore()
        rows.append({"reduction": red, "ranks": sorted({d.rank for d in decs}), "n_params": comp["n_params"],
                     **{f"relative_time_{r['seq_len']}": r["relative_time_mean"] for r in rel["forward"]},
                     **{f"relative_time_median_{r['seq_len']}": r["relative_time_median"] for r in rel["forward"]},
                     **{f"flops_bound_{r['seq_len']}": r["flops_bound"] for r in rel["forward"]},
                     "decode_speedup": rel["decode"]["speedup"], "decode_bytes_bound": rel["decode"]["bytes_bound"],
                     "relative_size_params": rel["relative_size_params"], "dense": dense, "compressed": comp})
        log.info("%s", {k: v for k, v in rows[-1].items() if k not in ("dense", "compressed")})
    compression = time_compression(model, args, device) if args.time_compression else None
    # a config.json is named by its folder (a model directory), a shipped config by its hub id
    name = Path(args.model).parent.name if args.model.endswith(".json") else args.model.replace("/", "--")
    write(f"speed-from-config-{name}-{device.type}-{args.dtype}", {
        "model_config": args.model, "weights": "random (speed does not depend on the values)",
        "n_layers": getattr(config, "n_layer", getattr(config, "num_hidden_layers", None)),
        "kinds": args.kinds, "dtype": args.dtype, "device": str(device), "init_s": init_s,
        "dense_params": dense_params, "per_rank": rows, "compression_time": compression,
    })


def time_compression(model, args, device) -> dict:
    """Wall time of one-shot LoRD on this model (calibration, then decomposition), like the paper's 10 minutes.
    Compresses ``model`` in place: call it last."""
    red = next(r for r in args.reductions if r > 0)
    cfg = CompressionConfig(method="lord", kinds=args.kinds, rank=RankSpec("reduction", red, force=True))
    windows = torch.randint(0, model.config.vocab_size, (args.time_compression, 1024),
                            generator=torch.Generator().manual_seed(2))
    compressor = Compressor(model, cfg.kinds, batches=list(windows.split(8)), progress=False)
    _sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    t = time.perf_counter()
    compressor.statistics  # noqa: B018 (one calibration pass, timed on its own)
    _sync()
    calibration_s = time.perf_counter() - t
    t = time.perf_counter()
    compressor.apply(cfg.method, cfg.rank)
    _sync()
    return {"method": "lord", "reduction": red, "windows": args.time_compression, "seq_len": 1024,
            "calibration_s": calibration_s, "decomposition_s": time.perf_counter() - t,
            "peak_memory_bytes": speed.peak_memory_bytes(device)}


if __name__ == "__main__":
    guarded(main)

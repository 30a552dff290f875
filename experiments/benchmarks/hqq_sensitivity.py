"""How much HQQ quantization amplifies a tiny change of its input: why 4-bit results reproduce less tightly.

    python -m experiments.benchmarks.hqq_sensitivity [--rows 896] [--cols 1024] [--seed 0]

A float32 result computed on two machines can differ in the 5th significant digit (docs/reproduce.md). This
measures what such a difference becomes after quantization: a random Gaussian matrix ``W`` (seeded) and
``W ⊙ (1 + ε·N(0, 1))`` for ε in 1e-7 … 1e-4 are each quantized with HQQ (lord.quantization's settings: groups of
64, 4 and 8 bits), with its half-quadratic solver (``optimize``, as the quantize stage runs it) and without it
(plain round-to-nearest with min/max scales); recorded: ‖Q(W) − Q(W')‖ / ‖W‖ (the amplified difference), its
ratio to ε, the share of dequantized weights that changed, and the quantization error ‖Q(W) − W‖ / ‖W‖ for scale.
Writes results/benchmarks/hqq-sensitivity.json.

Time: ~40 s on a 2-core CPU, measured (the defaults, one thread, on a shared machine)
"""

from __future__ import annotations

import torch
import torch.nn as nn

from experiments.benchmarks.common import parser, positive_int, write

EPSILONS = (1e-7, 1e-6, 1e-5, 1e-4)


def dequantized(W: torch.Tensor, bits: int, group_size: int, optimize: bool) -> torch.Tensor:
    from hqq.core.quantize import BaseQuantizeConfig

    from lord.hf.modeling_lord import quantized_linear_class

    layer = nn.Linear(W.shape[1], W.shape[0], bias=False)
    layer.weight.data = W.clone()
    config = BaseQuantizeConfig(nbits=bits, group_size=group_size)
    config["weight_quant_params"]["optimize"] = optimize
    q = quantized_linear_class()(layer, quant_config=config, compute_dtype=torch.float32, device="cpu")
    return q.dequantize().float()


def main() -> None:
    ap = parser(__doc__, model=None)
    ap.add_argument("--rows", type=positive_int, default=896)
    ap.add_argument("--cols", type=positive_int, default=1024)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    g = torch.Generator().manual_seed(args.seed)
    W = torch.randn(args.rows, args.cols, generator=g) / args.cols ** 0.5
    noise = torch.randn(W.shape, generator=g)
    rows = []
    for bits in (4, 8):
        for optimize in (True, False):
            base = dequantized(W, bits, 64, optimize)
            error = float((base - W).norm() / W.norm())
            for eps in EPSILONS:
                other = dequantized(W * (1 + eps * noise), bits, 64, optimize)
                diff = float((base - other).norm() / W.norm())
                rows.append({"bits": bits, "group_size": 64, "optimize": optimize, "epsilon": eps,
                             "quantization_error": error, "difference": diff, "amplification": diff / eps,
                             "changed_share": float((base != other).float().mean())})
    write("hqq-sensitivity", {"shape": [args.rows, args.cols], "seed": args.seed, "rows": rows})


if __name__ == "__main__":
    main()

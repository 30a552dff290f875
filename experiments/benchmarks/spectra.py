"""How much low-rank structure each layer has: energy kept at the paper's rank reductions, outputs and weights.

    python -m experiments.benchmarks.spectra [--model qwen2.5-coder-0.5b] [--windows 16] [--reductions 10 30 50]

For every target of ``--kinds`` (default: all kinds, q/k/v and gate/up grouped) at the rank that each % rank
reduction gives it:

* ``output_energy_kept_<red>``: ``sum_{i<=r} lambda_i / sum_i lambda_i`` of the output covariance (the basis of
  ``lord``/``lord_meanfix``): the share of the output variance that the decomposition keeps on the calibration
  data (one minus it is its relative error there);
* ``weight_energy_kept_<red>``: ``sum_{i<=r} sigma_i^2 / sum_i sigma_i^2`` of the weight matrix (what plain SVD
  keeps, data-free);
* ``output_rank_99``: the fewest directions that keep 99 % of the output variance, as % of ``d_min``.

Writes results/benchmarks/spectra-<model>.json. Statistics only; the model is not evaluated.

Time: 2-5 min on a 2-core CPU, measured (per model)
"""

from __future__ import annotations

import torch

from experiments.benchmarks.common import parser, reduction, stdlib_windows, write
from experiments.cli import guarded
from lord.compress import Compressor
from lord.methods import get_method
from lord.models import load_model
from lord.ranks import RankSpec
from lord.structure import dense_W_b


def kept(values: torch.Tensor, r: int) -> float:
    """Share of ``values`` (non-negative, descending) in the first ``r``."""
    return float(values[:r].sum() / values.sum())


def target_spectra(compressor: Compressor, target, method, ranks: dict[float, int]) -> dict:
    """The spectra measurements of one target (module docstring)."""
    W, _ = dense_W_b(compressor.model, target.members)
    lam = compressor.basis(method, target, compressor.statistics).spectrum.to(torch.float64).clamp_min(0)
    sig2 = torch.linalg.svdvals(W).square()
    d_min = min(W.shape)
    row = {"target": target.name, "kind": target.kind, "block": target.block, "shape": list(W.shape),
           "output_rank_99": 100 * int((lam.cumsum(0) < 0.99 * lam.sum()).sum() + 1) / d_min}
    for red, r in ranks.items():
        row[f"rank_{red:g}"] = r
        row[f"output_energy_kept_{red:g}"] = kept(lam, r)
        row[f"weight_energy_kept_{red:g}"] = kept(sig2, r)
    return row


def main():
    ap = parser(__doc__, kinds=["all"], windows=16)
    ap.add_argument("--reductions", nargs="+", type=reduction, default=[10, 30, 50])
    ap.add_argument("--ungrouped", action="store_true", help="q/k/v and gate/up as separate targets")
    args = ap.parse_args()
    model, tok, info = load_model(args.model)
    cal, desc = stdlib_windows(tok, "calibration", args.windows)
    compressor = Compressor(model, args.kinds, not args.ungrouped, batches=list(cal.split(args.batch_size)))
    method = get_method("lord_meanfix")
    plans = {red: {d.name: d.rank for _, d in compressor.plan(method, RankSpec("reduction", red, force=True))}
             for red in args.reductions}
    rows = []
    for t in compressor.targets:
        rows.append(target_spectra(compressor, t, method, {red: plans[red][t.name] for red in args.reductions}))
        print(f"{t.name}: output energy kept at {args.reductions[0]:g} % rank reduction "
              f"{rows[-1][f'output_energy_kept_{args.reductions[0]:g}']:.4f}", flush=True)
    write(f"spectra-{args.model}", {
        "model": args.model, "gguf_file_type": info.get("gguf_file_type"), "kinds": args.kinds,
        "group": not args.ungrouped, "calibration_windows": args.windows, "seq_len": int(cal.shape[1]),
        "calibration_data": desc, "reductions": args.reductions, "per_target": rows,
    })


if __name__ == "__main__":
    guarded(main)

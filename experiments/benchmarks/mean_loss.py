"""Where the paper's bias rule loses the output mean: per layer kind, on the calibration data.

    python -m experiments.benchmarks.mean_loss --model qwen2.5-coder-0.5b --kinds all --reductions 10 30 50

For a layer with outputs ``y = W x + b`` (mean ``ybar``, covariance eigenvalues ``lambda``) and the top-``r``
principal directions ``Q_r``, the mean squared output error over the calibration vectors is

* ``lord_meanfix``: ``sum_{i>r} lambda_i`` (the discarded variance), and
* ``lord`` (paper Eq. 5, ``y' = Q_r Q_r^T y``): that plus ``||(I - Q_r Q_r^T) ybar||^2`` (the mean outside
  the kept directions); ``lord_extra_without_bias`` is that term had the layer no bias (``ybar = W mu``).

(``lord.methods.output_errors``; tested against the errors measured on a layer's outputs.)

Writes results/benchmarks/mean-loss-<model>-<kinds>.json with both errors summed per kind and reduction, and
their ratio. Exact algebra on the calibration statistics; no evaluation of the model.

Time: a few minutes on a 2-core CPU, estimated (not recorded: one calibration pass of the 0.5B model and its
eigendecompositions)
"""

from __future__ import annotations

from collections import defaultdict

from experiments.benchmarks.common import parser, reduction, stdlib_windows, write
from experiments.cli import guarded
from lord.compress import Compressor
from lord.methods import get_method, output_errors
from lord.models import load_model
from lord.ranks import RankSpec
from lord.structure import dense_W_b


def main():
    ap = parser(__doc__, kinds=["all"], windows=8)
    ap.add_argument("--reductions", nargs="+", type=reduction, default=[10, 30, 50])
    args = ap.parse_args()
    model, tok, info = load_model(args.model)
    cal, desc = stdlib_windows(tok, "calibration", args.windows)
    compressor = Compressor(model, args.kinds, args.group, batches=list(cal.split(args.batch_size)))
    lord = get_method("lord")
    ranks = {red: {d.name: d.rank for _, d in compressor.plan(lord, RankSpec("reduction", red, force=True))}
             for red in args.reductions}
    sums = defaultdict(lambda: defaultdict(float))
    for t in compressor.targets:
        basis = compressor.basis(lord, t, compressor.statistics)
        _, b = dense_W_b(model, t.members)
        for red in args.reductions:
            r = ranks[red][t.name]
            err, err_no_bias = output_errors(basis, b, r), output_errors(basis, None, r)
            s = sums[(t.kind, red)]
            s["layers"] += 1
            s["layers_with_bias"] += b is not None
            s["meanfix_mse"] += err["meanfix"]
            s["lord_extra_mse"] += err["lord_extra"]
            s["lord_extra_without_bias"] += err_no_bias["lord_extra"]
    counts = ("layers", "layers_with_bias")
    rows = [{"kind": kind, "reduction": red, **{k: int(v) if k in counts else v for k, v in s.items()},
             "lord_over_meanfix_mse": (s["meanfix_mse"] + s["lord_extra_mse"]) / s["meanfix_mse"]}
            for (kind, red), s in sorted(sums.items())]
    write(f"mean-loss-{args.model}-{'-'.join(args.kinds)}{'-grouped' if args.group else ''}", {
        "model": args.model, "gguf_file_type": info.get("gguf_file_type"), "kinds": args.kinds,
        "group": args.group, "calibration_windows": args.windows, "calibration_data": desc,
        "per_kind": rows,
    })


if __name__ == "__main__":
    guarded(main)

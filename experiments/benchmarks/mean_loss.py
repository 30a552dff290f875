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
"""

from __future__ import annotations

import argparse
from collections import defaultdict

from experiments.benchmarks.common import stdlib_windows, write
from experiments.cli import guarded
from lord.compress import CompressionConfig, calibrate, compute_target_basis, dense_W_b, plan
from lord.methods import output_errors
from lord.models import load_model
from lord.ranks import RankSpec


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--kinds", nargs="+", default=["all"])
    ap.add_argument("--group", action="store_true")
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--reductions", nargs="+", type=float, default=[10, 30, 50])
    args = ap.parse_args()
    model, tok, info = load_model(args.model)
    cal, desc = stdlib_windows(tok, "calibration", args.windows)
    cfgs = {red: CompressionConfig(method="lord", kinds=args.kinds, group=args.group,
                                   rank=RankSpec("reduction", red, force=True)) for red in args.reductions}
    targets, _ = plan(model, cfgs[args.reductions[0]])
    ranks = {red: {d.name: d.rank for d in plan(model, c)[1]} for red, c in cfgs.items()}
    stats = calibrate(model, targets, list(cal.split(args.batch_size)))
    sums = defaultdict(lambda: defaultdict(float))
    for t in targets:
        basis = compute_target_basis(model, t, "lord", stats)
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

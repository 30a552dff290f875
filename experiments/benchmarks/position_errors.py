"""Where a decomposition's output error falls: on a window's first position (the attention sink) or on the rest.

    python -m experiments.benchmarks.position_errors [--model qwen2.5-coder-0.5b] [--kinds mlp_down] [--group]
                                                     [--methods lord lord_meanfix whiten] [--reductions 10]
                                                     [--windows 16] [--probe-windows 1]

Each method decomposes the chosen layers (statistics of ``--windows`` calibration windows); then, on
``--probe-windows`` *validation* windows, every decomposed module is applied to the dense model's own input of that
module (so each layer's error is its own, not compounded) and compared with the dense output:

* ``rel_err_first`` = ‖y′₀ − y₀‖ / ‖y₀‖ over the windows' first positions, ``rel_err_rest`` the same over every
  other position; ``share_first`` = the first positions' share of the squared error.

A method that keeps the calibration mean (``lord_meanfix``) is exact on average but adds the same vector to every
position; this shows which positions pay for that. Writes results/benchmarks/position-errors-<model>-<kinds>.json.

Time: a few minutes on a 2-core CPU, estimated (not recorded: one calibration pass of the 0.5B model, the
decompositions and the probe windows)
"""

from __future__ import annotations

import torch

from experiments.benchmarks.common import parser, positive_int, reduction, stdlib_windows, write
from experiments.cli import guarded
from lord.compress import Compressor
from lord.methods import get_method
from lord.models import load_model
from lord.ranks import RankSpec


def member_inputs(model, members: list[str], probe: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each module's input on the probe windows (dense model): {name: (windows, positions, d_in)}."""
    seen: dict[str, list[torch.Tensor]] = {m: [] for m in members}

    def keep(name):
        return lambda _m, args, _o: seen[name].append(args[0].detach().float())

    handles = [model.get_submodule(m).register_forward_hook(keep(m)) for m in members]
    try:
        with torch.inference_mode():
            for window in probe.split(1):
                model(input_ids=window, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return {m: torch.cat(v) for m, v in seen.items()}


def position_errors(dense_out: torch.Tensor, out: torch.Tensor) -> dict:
    """The module docstring's measures for outputs of shape (windows, positions, d_out)."""
    err = (out - dense_out).square().sum(-1)  # (windows, positions)
    ref = dense_out.square().sum(-1)
    first, rest = err[:, 0].sum(), err[:, 1:].sum()
    return {"rel_err_first": float((first / ref[:, 0].sum()).sqrt()),
            "rel_err_rest": float((rest / ref[:, 1:].sum()).sqrt()),
            "share_first": float(first / (first + rest)) if first + rest > 0 else None}


def main():
    ap = parser(__doc__, kinds=["mlp_down"], windows=16)
    ap.add_argument("--probe-windows", type=positive_int, default=1, help="validation windows measured")
    ap.add_argument("--reductions", nargs="+", type=reduction, default=[10])
    ap.add_argument("--methods", nargs="+", default=["lord", "lord_meanfix", "whiten"])
    args = ap.parse_args()
    for m in args.methods:
        get_method(m)  # an unknown method fails here, before the model loads
    model, tok, info = load_model(args.model)
    cal, cal_desc = stdlib_windows(tok, "calibration", args.windows)
    probe, probe_desc = stdlib_windows(tok, "validation", args.probe_windows)
    compressor = Compressor(model, args.kinds, args.group, batches=list(cal.split(args.batch_size)))
    members = [m for t in compressor.targets for m in t.members]
    inputs = member_inputs(model, members, probe)
    with torch.inference_mode():
        dense = {m: model.get_submodule(m)(x) for m, x in inputs.items()}
    rows = []
    for method in args.methods:
        for red in args.reductions:
            compressor.apply(method, RankSpec("reduction", red, force=True))
            with torch.inference_mode():
                for t in compressor.targets:
                    for m in t.members:
                        rows.append({"method": method, "reduction": red, "module": m, "kind": t.kind,
                                     "block": t.block, **position_errors(dense[m], model.get_submodule(m)(inputs[m]))})
            compressor.restore()
            g = [r for r in rows if r["method"] == method and r["reduction"] == red]
            print(f"{method} {red:g} %: median rel_err_first "
                  f"{sorted(r['rel_err_first'] for r in g)[len(g) // 2]:.4f}, rel_err_rest "
                  f"{sorted(r['rel_err_rest'] for r in g)[len(g) // 2]:.4f}", flush=True)
    write(f"position-errors-{args.model}-{'+'.join(args.kinds)}{'-grouped' if args.group else ''}", {
        "model": args.model, "gguf_file_type": info.get("gguf_file_type"), "kinds": args.kinds, "group": args.group,
        "calibration_windows": args.windows, "probe_windows": args.probe_windows, "seq_len": int(cal.shape[1]),
        "calibration_data": cal_desc, "probe_data": probe_desc, "methods": args.methods,
        "reductions": args.reductions, "per_module": rows,
    })


if __name__ == "__main__":
    guarded(main)

"""How the SwiGLU nonlinearity carries the error of decomposed gate/up projections into MLP-down's input.

    python -m experiments.benchmarks.swiglu [--model qwen2.5-coder-0.5b] [--windows 16] [--probe-windows 2]
                                           [--reductions 10 30] [--methods lord_meanfix whiten]

Every block's gate and up projections are decomposed (``mlp_gate``/``mlp_up``; ``--group``: one shared basis,
the way all-grouped runs decompose them) with statistics of ``--windows`` calibration windows; the errors are
then measured on ``--probe-windows`` *validation* windows, block by block, on the dense model's own MLP inputs
``x`` (so each block's numbers are its own, not compounded by the blocks before it):

* ``rel_err_gate`` = ‖g′ − g‖ / ‖g‖ for ``g = gate(x)``, likewise ``rel_err_up`` for ``u = up(x)``;
* ``rel_err_h`` = ‖h′ − h‖ / ‖h‖ for MLP-down's input ``h = silu(g) ⊙ u`` (what the model actually uses), and
  ``rel_err_h_gate_only`` / ``rel_err_h_up_only`` with only one of the two decomposed;
* ``amplification`` = ``rel_err_h`` / ‖(g′ − g, u′ − u)‖ / ‖(g, u)‖: above 1 the nonlinearity makes the
  decomposition's error larger than it is at the projections (whose error the decomposition minimises); below 1
  it damps it;
* ``rel_err_out`` = ‖down(h′) − down(h)‖ / ‖down(h)‖ (the MLP output, ``down`` dense).

Writes results/benchmarks/swiglu-<model>[-grouped].json. No perplexity is evaluated.

Time: ~7 min on a 2-core CPU, measured (0.5B, --group)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from experiments.benchmarks.common import parser, positive_int, reduction, stdlib_windows, write
from experiments.benchmarks.position_errors import member_inputs
from experiments.cli import guarded
from lord.architectures import architecture_for
from lord.compress import Compressor
from lord.errors import LordError
from lord.methods import get_method
from lord.models import load_model
from lord.ranks import RankSpec


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ over every element."""
    return float((a - b).norm() / b.norm())


def mlp_inputs(model, blocks: list, gate_rel: str, probe: torch.Tensor) -> list[torch.Tensor]:
    """Each block's MLP input (what its gate projection reads) on the probe windows of the dense model, as
    (tokens, d_model) float32."""
    name_of = {m: n for n, m in model.named_modules()}
    names = [f"{name_of[b]}.{gate_rel}" for b in blocks]
    return [x.reshape(-1, x.shape[-1]) for x in member_inputs(model, names, probe).values()]


def block_errors(act, gate, up, down, dense_gate, dense_up, x: torch.Tensor) -> dict:
    """The module docstring's measurements for one block: ``gate``/``up`` decomposed, ``dense_*`` the originals,
    ``act`` the MLP's activation (SiLU for SwiGLU)."""
    with torch.inference_mode():
        g, u = dense_gate(x), dense_up(x)
        g2, u2 = gate(x), up(x)
        h, h2 = act(g) * u, act(g2) * u2
        both = torch.cat([g2 - g, u2 - u], -1).norm() / torch.cat([g, u], -1).norm()
        return {"rel_err_gate": relative(g2, g), "rel_err_up": relative(u2, u), "rel_err_h": relative(h2, h),
                "rel_err_h_gate_only": relative(act(g2) * u, h), "rel_err_h_up_only": relative(act(g) * u2, h),
                "amplification": relative(h2, h) / float(both) if both > 0 else None,
                "rel_err_out": relative(down(h2), down(h))}


def main():
    ap = parser(__doc__, windows=16)
    ap.add_argument("--probe-windows", type=positive_int, default=2, help="validation windows measured")
    ap.add_argument("--reductions", nargs="+", type=reduction, default=[10, 30])
    ap.add_argument("--methods", nargs="+", default=["lord_meanfix", "whiten"])
    ap.add_argument("--group", action="store_true", help="gate and up share one basis (as all-grouped runs)")
    args = ap.parse_args()
    for m in args.methods:
        get_method(m)  # an unknown method fails here, before the model loads
    model, tok, info = load_model(args.model)
    arch = architecture_for(model)
    if "mlp_gate" not in arch.kinds:
        raise LordError(f"{args.model} has no gated MLP (no mlp_gate kind): nothing to measure")
    (gate_rel,), (up_rel,), (down_rel,) = (arch.kinds[k] for k in ("mlp_gate", "mlp_up", "mlp_down"))
    cal, cal_desc = stdlib_windows(tok, "calibration", args.windows)
    probe, probe_desc = stdlib_windows(tok, "validation", args.probe_windows)
    blocks = list(model.get_submodule(arch.blocks))
    xs = mlp_inputs(model, blocks, gate_rel, probe)
    dense = [(b.get_submodule(gate_rel), b.get_submodule(up_rel)) for b in blocks]
    act = getattr(blocks[0].get_submodule(gate_rel.rsplit(".", 1)[0]), "act_fn", F.silu)
    compressor = Compressor(model, ["mlp_gate", "mlp_up"], args.group, batches=list(cal.split(args.batch_size)))
    rows = []
    for method in args.methods:
        for red in args.reductions:
            compressor.apply(method, RankSpec("reduction", red, force=True))
            for i, b in enumerate(blocks):
                rows.append({"method": method, "reduction": red, "block": i, **block_errors(
                    act, b.get_submodule(gate_rel), b.get_submodule(up_rel), b.get_submodule(down_rel), *dense[i],
                    xs[i])})
            compressor.restore()
            mean = {k: sum(r[k] or 0 for r in rows[-len(blocks):]) / len(blocks)
                    for k in ("rel_err_gate", "rel_err_up", "rel_err_h", "amplification")}
            print(f"{method} {red:g} %: " + ", ".join(f"mean {k} {v:.4f}" for k, v in mean.items()), flush=True)
    write(f"swiglu-{args.model}" + ("-grouped" if args.group else ""), {
        "model": args.model, "gguf_file_type": info.get("gguf_file_type"), "group": args.group,
        "activation": getattr(act, "__name__", type(act).__name__),
        "calibration_windows": args.windows, "probe_windows": args.probe_windows, "seq_len": int(cal.shape[1]),
        "calibration_data": cal_desc, "probe_data": probe_desc, "methods": args.methods,
        "reductions": args.reductions, "per_block": rows,
    })


if __name__ == "__main__":
    guarded(main)

"""How much of each target's output statistics the first position of a window carries (attention sinks).

    python -m experiments.benchmarks.first_position [--model qwen2.5-coder-0.5b] [--windows 16] [--skip 1 4]

One calibration pass gathers, for every target of ``--kinds`` (default: all kinds, q/k/v and gate/up grouped),
the statistics over every position and over all but the first ``k`` positions of each window (``--skip``).
Their difference is exactly what the first ``k`` positions contribute (the sums are additive), so for each
target, in its *output* space ``z = W x`` (input-side statistics are mapped through ``W``):

* ``share_second_moment``: the first position's share of ``sum_t ||z_t||^2`` (1/seq_len if it were typical);
* ``share_scatter``: its share of ``sum_t ||z_t - zbar||^2``, the covariance trace the basis is fitted to;
* ``share_top_directions``: that share along each of the top 4 principal directions of the covariance;
* ``mean_shift``: ``||zbar - zbar_skip|| / ||zbar_skip||``, how far one position moves the output mean that
  ``lord_meanfix`` keeps in its bias;
* ``overlap_<k>_at_<reduction>``: ``||Q_r^T Q'_r||_F^2 / r``, the overlap of the kept subspaces at the rank
  of that % rank reduction with and without the first ``k`` positions (1: the same subspace).

Writes results/benchmarks/first-position-<model>.json. Statistics only; the model is not evaluated.

Time: ~5 min on a 2-core CPU, measured (0.5B, 16 windows)
"""

from __future__ import annotations

import torch

from experiments.benchmarks.common import parser, positive_int, reduction, stdlib_windows, write
from experiments.cli import guarded
from lord.architectures import architecture_for
from lord.calibration import Moments, collect_statistics_per_skip, stat_slot
from lord.compress import Compressor
from lord.methods import get_method
from lord.models import load_model
from lord.ranks import RankSpec
from lord.structure import dense_W_b

TOP = 4
SEQ_LEN = 1024  # stdlib_windows' window length


def first_positions(full: Moments, rest: Moments) -> tuple[int, torch.Tensor]:
    """(count, scatter around the full mean) of the vectors in ``full`` but not in ``rest``."""
    n0, s0, S0 = full.n - rest.n, full.sum_v - rest.sum_v, full.sum_vv - rest.sum_vv
    mu = full.mean()
    return n0, S0 - torch.outer(s0, mu) - torch.outer(mu, s0) + n0 * torch.outer(mu, mu)


def quad(W: torch.Tensor | None, M: torch.Tensor, Q: torch.Tensor | None = None) -> torch.Tensor:
    """trace(W M W^T) (``Q`` None) or the diagonal of Q^T W M W^T Q; ``W`` None means the identity."""
    if Q is not None:
        U = Q if W is None else W.T @ Q
        return ((M @ U) * U).sum(0)
    return M.diagonal().sum() if W is None else ((W @ M) * W).sum()


def target_row(model, t, stats: dict[int, dict[str, Moments]], method, ranks: dict[float, int]) -> dict:
    """The measurements of one target (module docstring) from statistics gathered with skip 0, 1 and others."""
    slot = stat_slot(model, t)
    W, _ = dense_W_b(model, t.members)
    Wz = None if slot.side == "output" else W  # statistics already in output space on the output side
    full = stats[0][slot.key]
    basis = method.basis(W, full, slot.side)
    row = {"target": t.name, "kind": t.kind, "block": t.block, "side": slot.side, "positions": full.n}
    if 1 in stats:
        rest = stats[1][slot.key]
        n0, scatter0 = first_positions(full, rest)
        total_scatter = full.covariance() * full.n
        Q = basis.Q[:, :TOP]
        shift, mean_rest = full.mean() - rest.mean(), rest.mean()
        if Wz is not None:
            shift, mean_rest = Wz @ shift, Wz @ mean_rest
        row.update(first_positions=n0,
                   share_second_moment=float(quad(Wz, full.sum_vv - rest.sum_vv) / quad(Wz, full.sum_vv)),
                   share_scatter=float(quad(Wz, scatter0) / quad(Wz, total_scatter)),
                   share_top_directions=(quad(Wz, scatter0, Q) / quad(Wz, total_scatter, Q)).tolist(),
                   mean_shift=float(shift.norm() / mean_rest.norm()))
    for k in sorted(stats):
        if k == 0:
            continue
        other = method.basis(W, stats[k][slot.key], slot.side)
        for red, r in ranks.items():
            row[f"overlap_{k}_at_{red:g}"] = float((basis.Q[:, :r].T @ other.Q[:, :r]).square().sum() / r)
    return row


def main():
    ap = parser(__doc__, kinds=["all"], windows=16)
    ap.add_argument("--skip", nargs="+", type=positive_int, default=[1, 4], help="also without the first k (1 always)")
    ap.add_argument("--reductions", nargs="+", type=reduction, default=[10, 30])
    ap.add_argument("--ungrouped", action="store_true", help="q/k/v and gate/up as separate targets")
    args = ap.parse_args()
    if max(args.skip) >= SEQ_LEN:
        ap.error(f"argument --skip: {max(args.skip)} leaves no position of a {SEQ_LEN}-token window")
    torch.manual_seed(0)
    model, tok, info = load_model(args.model)
    cal, desc = stdlib_windows(tok, "calibration", args.windows)
    compressor = Compressor(model, args.kinds, not args.ungrouped, progress=False)
    targets = compressor.targets
    skips = sorted({0, 1, *args.skip})  # 1: the first position alone, by difference
    stats = collect_statistics_per_skip(model, targets, list(cal.split(args.batch_size)), skips,
                                        architecture_for(model).blocks)
    method = get_method("lord_meanfix")
    ranks = {red: {d.name: d.rank for _, d in compressor.plan(method, RankSpec("reduction", red, force=True))}
             for red in args.reductions}
    rows = []
    for t in targets:
        rows.append(target_row(model, t, stats, method, {red: ranks[red][t.name] for red in args.reductions}))
        print(f"{t.name}: first-position share of the scatter {rows[-1].get('share_scatter', float('nan')):.3g}",
              flush=True)
    write(f"first-position-{args.model}", {
        "model": args.model, "gguf_file_type": info.get("gguf_file_type"), "kinds": args.kinds,
        "group": not args.ungrouped, "calibration_windows": args.windows, "seq_len": int(cal.shape[1]),
        "calibration_data": desc, "skips": skips, "reductions": args.reductions, "per_target": rows,
    })


if __name__ == "__main__":
    guarded(main)

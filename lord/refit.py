"""Refit each decomposed layer's ``B`` (and bias) on the compressed model's own inputs (stage ``refit``).

After decomposition, the layers of block ``i`` see inputs ``x~`` produced by the *compressed* blocks ``0..i-1``,
while their factors were fitted to the dense model's inputs ``x``. With ``A`` fixed and ``z = A x~``, the output
map that best reproduces the dense layer on the same tokens solves a least-squares problem (the idea behind
sequential/anchored SVD variants such as AA-SVD)::

    minimise  E || y - (B z + c) ||^2 + lam ||B||_F^2,      y = W x + b (the dense layer on the dense inputs)

    B = Cov(y, z) (Cov(z) + lam I)^-1,   c = ybar - B zbar       (rows of members that have an output bias)
    B = E[y z^T] (E[z z^T] + lam I)^-1,  c = 0                   (rows of members without one: no bias is added,
                                                                  so the parameter count does not change)

``lam = ridge * tr(E[z z^T]) / r``. The factors in place before the refit are one candidate of that problem, so
the refit never increases its objective on the calibration tokens (the ridge objective when ``ridge > 0``;
the run records both objectives before and after, per layer).

Streaming, block by block: the calibration windows' hidden states are kept for two models, the dense one and
the compressed one (two copies of the hidden states, as sequential calibration keeps one). For each block: one
pass of the dense block (its dense modules put back for the pass) gives ``y`` and advances the dense states;
one pass of the compressed block gives ``z`` on the same tokens; every target of the block is refitted; a last
pass of the refitted block advances the compressed states. With ``order="block"`` (the default) targets of one
block are refitted together, so a later one of them (``o_proj`` after q/k/v, ``down_proj`` after gate/up) is fitted
on inputs from the block's earlier targets *before* their refit, and after the refit it sees other inputs than it
was fitted on. ``order="sublayer"`` refits a block's targets group by group in forward order (a group: the targets
that read one input tensor, such as q/k/v or gate/up), each group on the compressed inputs from the block's already
refitted earlier groups, so every layer's fit holds for the inputs it sees afterwards (one dense and one compressed
pass of the block per group and batch instead of one). Embedding and LM-head targets are not refitted.

``fit="both"`` (stage ``anchor``, the AA-SVD / SAES-SVD idea) chooses the whole rank-r map, not only ``B``:

    minimise  E || y - (W' x~ + c) ||^2 + lam ||W'||_F^2   over rank-r W'

whose solution is the full-rank least-squares map ``W* = Cov(y, x~) K^-1`` (``K = Cov(x~) + lam I``; second moments
when the layer has no bias) truncated in the metric ``K``: ``W' = U_r U_r^T W*`` with ``U`` the left singular
vectors of ``W* L``, ``L L^T = K``. With ``x~ = x`` (no compressed block before it) and ``lam = 0`` this is
``whiten`` fitted to the layer's own outputs (tested). ``A = U_r^T W*`` and ``B = U_r`` replace the factors;
the ranks stay those of ``decompose``.

``metric_for`` (stage ``anchor``'s ``anchor.metric=loss``): a layer's output errors weighed by the decomposing
method's output metric ``G`` (``kfac``'s damped K-FAC factor, ``lord.methods.kfac.OutputMetric``), the objective
``E || G^1/2 (y - W' x~ - c) ||^2 + lam tr(W'^T G W')``. The full-rank minimiser ``W*`` is the same (``G`` is
full rank); the truncation is in both metrics: ``W' = G^-1/2 U_r U_r^T G^1/2 W*``, ``U`` the left singular vectors
of ``G^1/2 W* L``. With ``x~ = x`` and ``lam = 0`` this is ``kfac`` (tested), as the Euclidean fit is ``whiten``.
The Euclidean fit throws away the loss's weighting that ``kfac`` chose its directions by.

``prior="decomposition"`` (``anchor.prior``): the ridge shrinks towards the factors in place, ``W_0``, instead of
towards zero: ``lam tr((W' - W_0)^T G (W' - W_0))``, so ``W* = (Cov(y, x~) + lam W_0) K^-1`` and a large ridge
returns the decomposition itself (tested). ``W_0`` is one candidate with no ridge cost, so the fit still never
raises its ridge objective.

``keep_better``: a layer whose fit is worse on the held-out batches than the factors in place keeps those (the
record says ``kept``), so the held-out objective of no layer rises.

``skip_first=k`` leaves the first ``k`` positions of every window out of the fit (the moments; the blocks still run
on them), to measure whether the attention-sink position's large outputs dominate the least squares. Whatever it is,
each layer's record keeps ``first_position_residual_share``: the first position's share of the summed squared
residual ``|y - W_0 x~|^2`` of the factors in place before the fit, over every calibration token (``1 / seq_len`` if
the first position were like any other).

Held-out tokens (``holdout``, a share of the calibration batches, the last ones): each candidate ridge of
``ridges`` is fitted on the other batches and scored on those; the one with the lowest held-out objective is
refitted on all batches. The record keeps, per layer, the held-out objective of the factors before and of the
chosen fit, so a fit that only memorises its tokens shows there.
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn

from lord.architectures import architecture_for
from lord.calibration import CHUNK_ROWS, advance_inputs, block_inputs, counted_positions, run_hooked
from lord.progress import progress_bar
from lord.structure import set_module

log = logging.getLogger(__name__)


def _weigh(metric, X: torch.Tensor) -> torch.Tensor:
    """``G X`` (``metric``: an output metric such as ``lord.methods.kfac.OutputMetric``), ``X`` when there is none."""
    return X if metric is None else metric(X)


class PairMoments:
    """Float64 sums over tokens of ``z z^T``, ``y z^T``, ``z``, ``y`` and ``|y|^2`` (``y^T G y`` with an output
    ``metric``, which the objective then weighs the residual in)."""

    def __init__(self, d_out: int, rank: int, device=None, metric=None):
        f = dict(dtype=torch.float64, device=device)
        self.zz, self.yz = torch.zeros(rank, rank, **f), torch.zeros(d_out, rank, **f)
        self.z, self.y = torch.zeros(rank, **f), torch.zeros(d_out, **f)
        self.yy, self.n, self.metric = 0.0, 0, metric

    def update(self, y: torch.Tensor, z: torch.Tensor) -> None:
        y, z = y.reshape(-1, y.shape[-1]), z.reshape(-1, z.shape[-1])
        for yc, zc in zip(y.split(CHUNK_ROWS), z.split(CHUNK_ROWS)):
            yc, zc = yc.to(self.yz.device, torch.float32), zc.to(self.zz.device, torch.float32)
            self.zz += (zc.T @ zc).double()
            self.yz += (yc.T @ zc).double()
            self.z += zc.sum(0, dtype=torch.float64)
            self.y += yc.sum(0, dtype=torch.float64)
            yd = yc.double()
            self.yy += float((yd * _weigh(self.metric, yd.T).T).sum())
        self.n += y.shape[0]

    def __iadd__(self, other: "PairMoments") -> "PairMoments":
        self.zz += other.zz
        self.yz += other.yz
        self.z += other.z
        self.y += other.y
        self.yy += other.yy
        self.n += other.n
        return self

    def objective(self, B: torch.Tensor, c: torch.Tensor) -> float:
        """``E || y - (B z + c) ||^2`` (``E || G^1/2 (y - B z - c) ||^2`` with a metric) from the sums alone."""
        n = self.n
        Mzz, Myz, zbar, ybar = self.zz / n, self.yz / n, self.z / n, self.y / n
        GB, Gc = _weigh(self.metric, B), _weigh(self.metric, c[:, None])[:, 0]
        return (self.yy / n - 2 * float((GB * Myz).sum()) - 2 * float(ybar @ Gc) + float((GB @ Mzz * B).sum())
                + 2 * float(Gc @ (B @ zbar)) + float(c @ Gc))

    def norm(self, M: torch.Tensor) -> float:
        """``tr(M^T G M)`` (``||M||_F^2`` without a metric): the ridge term's norm."""
        return float((M * _weigh(self.metric, M)).sum())

    def solve(self, has_bias: torch.Tensor, ridge: float) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(B, c, lam): the minimiser; rows where ``has_bias`` is False get no intercept."""
        n, r = self.n, self.zz.shape[0]
        Mzz, Myz, zbar, ybar = self.zz / n, self.yz / n, self.z / n, self.y / n
        lam = ridge * float(torch.trace(Mzz)) / r
        eye = torch.eye(r, dtype=torch.float64, device=Mzz.device)
        Czz, Cyz = Mzz - torch.outer(zbar, zbar), Myz - torch.outer(ybar, zbar)
        B_c = torch.linalg.lstsq(Czz + lam * eye, Cyz.T).solution.T
        B_u = torch.linalg.lstsq(Mzz + lam * eye, Myz.T).solution.T
        rows = has_bias.to(Mzz.device)[:, None]
        B = torch.where(rows, B_c, B_u)
        c = torch.where(has_bias.to(Mzz.device), ybar - B_c @ zbar, torch.zeros_like(ybar))
        return B, c, lam

    def solve_low_rank(self, has_bias: torch.Tensor, ridge: float, rank: int, prior: torch.Tensor | None = None):
        """(A, B, c, lam): the rank-``rank`` minimiser of the ridge objective over ``W' = B A`` (``z`` = the layer's
        input; truncated in the output metric when there is one); centred (an intercept) when every row has a bias,
        else uncentred with an intercept added after the fit for the rows that have one. ``prior``: the map the
        ridge shrinks towards (zero when None)."""
        n, d = self.n, self.zz.shape[0]
        Mzz, Myz, zbar, ybar = self.zz / n, self.yz / n, self.z / n, self.y / n
        centred = bool(has_bias.all())
        Czz = Mzz - torch.outer(zbar, zbar) if centred else Mzz
        Cyz = Myz - torch.outer(ybar, zbar) if centred else Myz
        Czz = (Czz + Czz.T) / 2
        lam = ridge * float(torch.trace(Czz)) / d
        vals, vecs = torch.linalg.eigh(Czz + lam * torch.eye(d, dtype=torch.float64, device=Czz.device))
        vals = vals.clamp_min(float(vals.max()) * 1e-12)
        if prior is not None:
            Cyz = Cyz + lam * prior.to(Cyz)
        W_full = ((Cyz @ vecs) / vals) @ vecs.T  # (Cyz + lam W_0) K^-1
        G = self.metric
        root = (lambda X: X) if G is None else G.root  # noqa: E731
        U = torch.linalg.svd(root(W_full) @ (vecs * vals.sqrt()), full_matrices=False)[0][:, :rank]
        A, B = root(U).T @ W_full, (U if G is None else G.inv_root(U))
        c = torch.where(has_bias.to(Mzz.device), ybar - B @ (A @ zbar), torch.zeros_like(ybar))
        return A, B, c, lam


def _factors(model: nn.Module, members) -> tuple[torch.Tensor, list[nn.Linear]]:
    """(A, the members' B linears) of a decomposed target."""
    mods = [model.get_submodule(m) for m in members]
    if len(mods) == 1:
        return mods[0][0].weight, [mods[0][1]]
    return mods[0]._shared.weight, [m.B for m in mods]


ORDERS = ("block", "sublayer")
PRIORS = ("zero", "decomposition")


def refit(model: nn.Module, compressor, decompositions, batches, ridge: float = 1e-6, progress: bool = True,
          fit: str = "B", holdout: float = 0.0, ridges=None, skip_first: int = 0, order: str = "block",
          metric_for=None, keep_better: bool = False, prior: str = "zero") -> dict:
    """Refit every block target of ``decompositions`` (already applied by ``compressor``) in place; returns a
    record: per layer, the objective before and after (and the ridge term's lam).

    ``fit``: "B" (``B`` and bias, ``A`` fixed) or "both" (the whole rank-r map). ``holdout`` > 0 keeps that share
    of the batches (the last ones) out of each candidate fit of ``ridges`` (default: ``[ridge]``) to choose it;
    ``skip_first`` leaves that many leading positions of every window out of the fit; ``order``: "block" (a block's
    targets fitted together) or "sublayer" (group by group in forward order, see the module's docstring).
    ``metric_for(decomposition)``: its output metric or None (``fit="both"`` only); ``keep_better``: keep the
    factors in place where the fit is worse on the held-out batches; ``prior``: "zero" or "decomposition" (the ridge
    shrinks towards the factors in place; ``fit="both"`` only)."""
    if prior not in PRIORS or (prior != "zero" and fit != "both"):
        raise ValueError(f"prior must be one of {PRIORS} ('decomposition' with fit='both' only), got {prior!r}")
    if metric_for is not None and fit != "both":
        raise ValueError("an output metric is for fit='both' (the anchored fit) only")
    if fit not in ("B", "both"):
        raise ValueError(f"fit must be 'B' or 'both', got {fit!r}")
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    arch = architecture_for(model, compressor.architecture)
    blocks = model.get_submodule(arch.blocks)
    device = next(model.parameters()).device
    by_block: dict[int, list] = {}
    for d in decompositions:
        if d.block is not None:
            by_block.setdefault(d.block, []).append(d)
    skipped = [d.name for d in decompositions if d.block is None]
    if not by_block:
        return {"targets": [], "skipped": skipped}
    compressed = block_inputs(model, blocks[0], batches, device)
    dense = list(compressed)
    held_from = len(batches) - (round(holdout * len(batches)) if holdout else 0)
    if held_from < 1:
        raise ValueError(f"holdout {holdout} leaves no calibration batch to fit on ({len(batches)} batches)")
    candidates = list(ridges) if ridges else [ridge]
    layers = []
    for i in progress_bar(range(max(by_block) + 1), desc="refit" if fit == "B" else "anchored fit", unit="block",
                          disable=not progress):
        if i not in by_block:
            advance_inputs(blocks[i], compressed)
            _advance_dense(model, blocks[i], [], compressor, dense)
            continue
        targets = by_block[i]
        groups = [targets] if order == "block" else forward_groups(blocks[i], model, targets, compressed)
        for group in groups:
            layers += _refit_group(model, compressor, blocks[i], i, group, dense, compressed, held_from, fit,
                                   candidates, skip_first, device, metric_for, keep_better, prior)
        advance_inputs(blocks[i], compressed)
        _advance_dense(model, blocks[i], targets, compressor, dense)
    return {"targets": layers, "skipped": skipped, "ridge": ridge, "fit": fit, "holdout": holdout,
            "ridges": candidates, "held_out_batches": len(batches) - held_from, "skip_first": skip_first,
            "order": order, **({"metric": "loss"} if metric_for is not None else {}),
            **({"keep_better": True} if keep_better else {}), **({"prior": prior} if prior != "zero" else {})}


def _refit_group(model, compressor, block, i, group, dense, compressed, held_from, fit, candidates, skip_first,
                 device, metric_for=None, keep_better=False, prior="zero") -> list[dict]:
    """Refit the targets of ``group`` (of block ``i``) together on every calibration batch; their records."""
    dims = {d.name: d.rank if fit == "B" else d.d_in for d in group}
    metrics = {d.name: metric_for(d) if metric_for else None for d in group}
    acc = {d.name: [PairMoments(sum(d.d_outs), dims[d.name], device, metrics[d.name]) for _ in range(2)]
           for d in group}
    residual = {d.name: FirstPositionShare(*_start_map(model, d, fit, device)) for d in group}
    for j in range(len(compressed)):
        ys = _dense_outputs(model, block, group, compressor, dense, j)
        zs = (_compressed_codes if fit == "B" else _compressed_inputs)(model, block, group, compressed, j)
        for d in group:
            residual[d.name].update(ys[d.name], zs[d.name])
            acc[d.name][j >= held_from].update(counted_positions(ys[d.name], skip_first),
                                               counted_positions(zs[d.name], skip_first))
    return [{**_refit_target(model, d, i, *acc[d.name], fit, candidates, device, keep_better, prior),
             "first_position_residual_share": residual[d.name].share()} for d in group]


def forward_groups(block: nn.Module, model: nn.Module, targets, states) -> list[list]:
    """``targets`` of ``block`` in the order the block calls them on its first stored input, consecutive targets that
    read the same input tensor (q/k/v, gate/up) in one group."""
    seen: list[tuple] = []
    handles = []
    for d in targets:
        def hook(_mod, args, _out, d=d):
            if all(d is not e for e, _ in seen):
                seen.append((d, args[0]))
        handles.append(model.get_submodule(d.members[0]).register_forward_hook(hook))
    run_hooked(block, states[:1], handles)
    missing = [d.name for d in targets if all(d is not e for e, _ in seen)]
    if missing:
        raise RuntimeError(f"refit: the block never called {missing}; cannot order its targets")
    groups: list[list] = []
    last = None
    for d, x in seen:
        if last is not None and x is last:
            groups[-1].append(d)
        else:
            groups.append([d])
        last = x
    return groups


class FirstPositionShare:
    """The first position's share of ``sum |y - (M z + c)|^2`` over every token of the windows seen."""

    def __init__(self, M: torch.Tensor, c: torch.Tensor):
        self.M, self.c = M.float(), c.float()  # a diagnostic share: float32 products, float64 sums
        self.first, self.total = 0.0, 0.0

    def update(self, y: torch.Tensor, z: torch.Tensor) -> None:
        if y.dim() != 3:  # (batch, positions, dim) only; other shapes carry no positions
            return
        for b in range(y.shape[0]):
            r = y[b].to(self.M.device, torch.float32) - (z[b].to(self.M.device, torch.float32) @ self.M.T + self.c)
            sq = r.square().sum(-1, dtype=torch.float64)
            self.first += float(sq[0])
            self.total += float(sq.sum())

    def share(self) -> float | None:
        return self.first / self.total if self.total > 0 else None


def _start_map(model, d, fit: str, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, c): the map from the fit's ``z`` to the layer's output as the factors in place compute it."""
    B0, c0, _, A, _ = _current(model, d, device)
    return (B0 if fit == "B" else B0 @ A.detach().double().to(device)), c0


def _current(model, d, device):
    """(W' as the layer computes it now, c, has_bias, A, the members' B linears) of a decomposed target."""
    A, Bs = _factors(model, d.members)
    B0 = torch.cat([b.weight.detach().double() for b in Bs]).to(device)
    c0 = torch.cat([b.bias.detach().double() if b.bias is not None else
                    torch.zeros(b.out_features, dtype=torch.float64, device=device) for b in Bs])
    has_bias = torch.cat([torch.full((b.out_features,), b.bias is not None) for b in Bs])
    return B0, c0, has_bias, A, Bs


def _refit_target(model, d, block: int, fit_m: PairMoments, held_m: PairMoments, fit: str, ridges, device,
                  keep_better: bool = False, prior: str = "zero") -> dict:
    """Choose the ridge on the held-out moments (when there are any), fit on all, write the factors (unless
    ``keep_better`` and the fit is worse on the held-out moments than the factors in place); the record."""
    B0, c0, has_bias, A, Bs = _current(model, d, device)
    if fit == "both":  # the objective's z is the layer's input: the map in place is B0 A
        B0 = B0 @ A.detach().double().to(device)

    def solve(m, lam_rel):
        if fit == "B":
            B, c, lam = m.solve(has_bias, lam_rel)
            return None, B, c, lam
        return m.solve_low_rank(has_bias, lam_rel, d.rank, B0 if prior == "decomposition" else None)

    def mapped(A_, B_):
        return B_ if A_ is None else B_ @ A_

    held = None
    if held_m.n:
        scores = []
        for lam_rel in ridges:
            A_, B_, c_, _ = solve(fit_m, lam_rel)
            scores.append((held_m.objective(mapped(A_, B_), c_), lam_rel))
        held_after, chosen = min(scores)
        held = {"held_out_tokens": held_m.n, "held_out_before": held_m.objective(B0, c0),
                "held_out_after": held_after, "held_out_by_ridge": [s for s, _ in scores]}
    else:
        chosen = ridges[0]
    fit_m += held_m
    A_new, B, c, lam = solve(fit_m, chosen)
    W = mapped(A_new, B)
    towards = B0 if prior == "decomposition" else torch.zeros_like(B0)
    ridge_term = lambda M: lam * fit_m.norm(M - towards)  # noqa: E731
    before, after = fit_m.objective(B0, c0), fit_m.objective(W, c)
    record = {"name": d.name, "block": block, "tokens": fit_m.n, "objective_before": before, "objective_after": after,
              "ridge_objective_before": before + ridge_term(B0), "ridge_objective_after": after + ridge_term(W),
              "lam": lam, "ridge": chosen, **(held or {})}
    if keep_better and held and held["held_out_after"] >= held["held_out_before"]:
        return {**record, "objective_after": before, "ridge_objective_after": record["ridge_objective_before"],
                "kept": True}
    row = 0
    with torch.no_grad():
        if A_new is not None:
            A.copy_(A_new.to(A.dtype))
        for b in Bs:
            b.weight.copy_(B[row:row + b.out_features].to(b.weight.dtype))
            if b.bias is not None:
                b.bias.copy_(c[row:row + b.out_features].to(b.bias.dtype))
            row += b.out_features
    return record


def _swap_in_dense(model, targets, compressor) -> dict:
    """Put the dense modules back -- ``targets``' and every other the compressor swapped out (the smaller MLP layers of
    neuron selection, which are no decomposition) -- and return the compressed ones to restore."""
    low = {}
    for m in {m for d in targets for m in d.members} | set(compressor._originals):
        low[m] = model.get_submodule(m)
        set_module(model, m, compressor._originals[m])
    return low


def _run_dense(model, block, targets, compressor, fn):
    low = _swap_in_dense(model, targets, compressor)
    try:
        return fn()
    finally:
        for m, mod in low.items():
            set_module(model, m, mod)


def _advance_dense(model, block, targets, compressor, states) -> None:
    _run_dense(model, block, targets, compressor, lambda: advance_inputs(block, states))


def _dense_outputs(model, block, targets, compressor, states, j) -> dict[str, torch.Tensor]:
    """Each target's dense output ``y = W x + b`` (members concatenated) on batch ``j`` of the dense states."""
    outs: dict[str, dict] = {d.name: {} for d in targets}

    def run():
        handles = []
        for d in targets:
            for m in d.members:
                def hook(_mod, _args, out, d=d, m=m):
                    outs[d.name][m] = out.detach()
                handles.append(model.get_submodule(m).register_forward_hook(hook))
        run_hooked(block, states[j:j + 1], handles)
    _run_dense(model, block, targets, compressor, run)
    return {d.name: torch.cat([outs[d.name][m] for m in d.members], dim=-1) for d in targets}


def _compressed_inputs(model, block, targets, states, j) -> dict[str, torch.Tensor]:
    """Each target's input ``x~`` on batch ``j`` of the compressed states."""
    inputs: dict[str, torch.Tensor] = {}
    handles = []
    for d in targets:
        def hook(_mod, args, _out, d=d):
            inputs[d.name] = args[0].detach()
        handles.append(model.get_submodule(d.members[0]).register_forward_hook(hook))
    run_hooked(block, states[j:j + 1], handles)
    return inputs


def _compressed_codes(model, block, targets, states, j) -> dict[str, torch.Tensor]:
    """Each target's bottleneck ``z = A x~`` on batch ``j`` of the compressed states."""
    codes: dict[str, torch.Tensor] = {}
    handles = []
    for d in targets:
        A, _ = _factors(model, d.members)

        def hook(_mod, args, _out, d=d, A=A):
            codes[d.name] = args[0].detach().to(A.dtype) @ A.detach().T
        handles.append(model.get_submodule(d.members[0]).register_forward_hook(hook))
    run_hooked(block, states[j:j + 1], handles)
    return codes

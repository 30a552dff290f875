"""Layer-level properties that follow from the maths of each method (see lord/methods/)."""

import pytest
import torch

from lord.calibration import ChannelAbsMean, Moments
from lord.curvature import Curvature, SecondMoment
from lord.methods import METHODS as REGISTRY, compute_basis, factors, get_method, output_errors
from lord.errors import LordError

METHODS = [m for m in REGISTRY.names() if REGISTRY.get(m).decomposes]  # the built-in ones, dense excluded

SHAPES = [(48, 16), (16, 48), (24, 24)]  # tall (input side), wide (output side), square


def _layer(d_out, d_in, n=400, seed=0):
    """A layer with a bias and correlated, non-centred inputs (so every method differs)."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(d_out, d_in, generator=g, dtype=torch.float64)
    b = torch.randn(d_out, generator=g, dtype=torch.float64)
    mix = torch.randn(d_in, d_in, generator=g, dtype=torch.float64) * torch.logspace(0, -2, d_in, dtype=torch.float64)
    X = (torch.randn(n, d_in, generator=g, dtype=torch.float64) @ mix.T
         + 3 * torch.randn(d_in, generator=g, dtype=torch.float64))
    return W, b, X


def _side(d_out, d_in):
    return "output" if d_out < d_in else "input"


def _moments(W, b, X, side):
    m = Moments(W.shape[0] if side == "output" else W.shape[1])
    m.update((X @ W.T).float() if side == "output" else X.float())
    # replace the float32 path by exact float64 sums, so the tests check the maths, not rounding
    V = X @ W.T if side == "output" else X
    m.sum_vv, m.sum_v = V.T @ V, V.sum(0)
    return m


def _curvature(W, X, seed=5):
    """K-FAC factors in exact float64 sums: ``A`` of the inputs ``X`` and a correlated output-gradient ``G``."""
    g = torch.Generator().manual_seed(seed)
    grads = torch.randn(len(X), W.shape[0], generator=g, dtype=torch.float64) @ torch.randn(
        W.shape[0], W.shape[0], generator=g, dtype=torch.float64)
    A, G = SecondMoment(W.shape[1]), SecondMoment(W.shape[0])
    A.sum, A.n, G.sum, G.n = X.T @ X, len(X), grads.T @ grads, len(X)
    return Curvature(A, [G])


def _statistic(method, W, b, X, side):
    """What ``method``'s basis reads: the moments of ``side``, the input channels' mean |x| (ASVD), or the K-FAC
    factors (kfac)."""
    if get_method(method).statistic == "curvature":
        return _curvature(W, X)
    if get_method(method).statistic == "channel_abs_mean":
        c = ChannelAbsMean(W.shape[1])
        c.update(X)
        return c
    return _moments(W, b, X, side)


def _basis(method, W, b, X):
    side = _side(*W.shape)
    return compute_basis(method, W, _statistic(method, W, b, X, side), "input" if get_method(method).statistic
                         == "channel_abs_mean" else side)


def _apply(method, W, b, X, rank):
    basis = _basis(method, W, b, X)
    A, B, bias = factors(method, basis, W, b, rank)
    return X @ (B @ A).T + (0 if bias is None else bias), B @ A


@pytest.mark.parametrize("shape", SHAPES)
def test_whiten_minimises_weighted_error_and_meanfix_the_affine_error(shape):
    W, b, X = _layer(*shape)
    Y = X @ W.T + b
    for r in range(1, min(shape) + 1):
        weighted = {m: torch.linalg.norm((W - _apply(m, W, b, X, r)[1]) @ X.T) for m in METHODS}
        affine = {m: torch.linalg.norm(Y - _apply(m, W, b, X, r)[0]) for m in METHODS}
        assert all(weighted["whiten"] <= v * (1 + 1e-9) + 1e-9 for v in weighted.values()), (r, weighted)
        assert all(affine["lord_meanfix"] <= v * (1 + 1e-9) + 1e-9 for v in affine.values()), (r, affine)
        assert affine["lord_meanfix"] <= affine["lord"] * (1 + 1e-9)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("method", METHODS)
def test_error_falls_monotonically_with_rank_on_any_input(shape, method):
    """The bases are nested, so the error cannot grow with r on *any* input: it is (I - P_r) applied to
    W x + b (lord), W x (whiten, svd) or W (x - mu) (lord_meanfix), and ||(I - P_r) v|| falls with r. kfac's
    projection is oblique, G^-1/2 U_r U_r^T G^1/2: its error falls in the norm of the damped G, ||G^1/2 (.)||."""
    W, b, X = _layer(*shape)
    metric = torch.eye(shape[0], dtype=torch.float64)
    if method == "kfac":
        from lord.methods.kfac import root_pair

        metric = root_pair(_curvature(W, X).G[0], get_method(method).config.damping)[0]
    X_new = torch.randn(50, shape[1], dtype=torch.float64) * 5  # held-out, off-distribution inputs
    Y_new = X_new @ W.T + b
    basis = _basis(method, W, b, X)
    errs = []
    for r in range(1, min(shape) + 1):
        A, B, bias = factors(method, basis, W, b, r)
        Yr = X_new @ (B @ A).T + (0 if bias is None else bias)
        errs.append(torch.linalg.norm((Y_new - Yr) @ metric, dim=1))
    for e1, e2 in zip(errs, errs[1:]):
        assert torch.all(e2 <= e1 + 1e-8)


def test_input_and_output_side_give_the_same_projection():
    """Eigenvectors of W C W^T (output side) span what the SVD of W L (input side) spans."""
    W, b, X = _layer(20, 30)
    r = 7
    for method in ("lord", "whiten"):
        Bs = []
        for side in ("input", "output"):
            basis = compute_basis(method, W, _moments(W, b, X, side), side)
            Bs.append(basis.Q[:, :r])
        P_in, P_out = (B @ B.T for B in Bs)
        assert torch.allclose(P_in, P_out, atol=1e-8)


def test_float32_chunk_accumulation_within_stated_bound():
    from lord.calibration import CHUNK_ROWS

    g = torch.Generator().manual_seed(3)
    X = torch.randn(5000, 32, generator=g) * 4 + 1
    m = Moments(32)
    m.update(X)
    exact = X.double().T @ X.double()
    bound = CHUNK_ROWS * 2.0**-24 * (X.double().abs().T @ X.double().abs())
    assert torch.all((m.sum_vv - exact).abs() <= bound)
    assert m.n == 5000


@pytest.mark.parametrize("shape", SHAPES)
def test_methods_of_one_basis_family_compute_the_same_basis(shape):
    """Compressor reuses bases across methods with equal ``basis_key()`` (in memory and on disk); that must be exact."""
    W, b, X = _layer(*shape)
    keys = {m: get_method(m).basis_key() for m in METHODS}
    assert keys["lord"] == keys["lord_meanfix"] and len(set(keys.values())) == len(METHODS) - 1
    for family in set(keys.values()):
        members = [m for m in METHODS if keys[m] == family]
        bases = [_basis(m, W, b, X) for m in members]
        for other in bases[1:]:
            assert torch.equal(other.Q, bases[0].Q) and torch.equal(other.spectrum, bases[0].spectrum)
            assert (other.mean_z is None) == (bases[0].mean_z is None)
            if other.mean_z is not None:
                assert torch.equal(other.mean_z, bases[0].mean_z)


@pytest.mark.parametrize("shape", SHAPES)
def test_output_errors_predict_the_measured_errors_of_lord_and_meanfix(shape):
    W, b, X = _layer(*shape)
    Y = X @ W.T + b
    side = _side(*W.shape)
    basis = compute_basis("lord", W, _moments(W, b, X, side), side)
    for r in (2, 7, min(shape)):
        predicted = output_errors(basis, b, r)
        mse = {m: float((Y - _apply(m, W, b, X, r)[0]).square().sum(1).mean()) for m in ("lord", "lord_meanfix")}
        assert mse["lord_meanfix"] == pytest.approx(predicted["meanfix"], rel=1e-8, abs=1e-9)
        assert mse["lord"] == pytest.approx(predicted["meanfix"] + predicted["lord_extra"], rel=1e-8)


def test_skip_first_counts_exactly_the_later_positions_of_every_window():
    """Statistics with ``skip_first=k`` equal the moments of the activations with each window's first k positions
    removed, captured independently (qwen2's MLP has no biases: input side mlp_up, output side mlp_down)."""
    from conftest import calib_batches, tiny_model

    from lord.calibration import stat_slot
    from lord.compress import CompressionConfig, Compressor
    from lord.errors import LordError

    model = tiny_model("qwen2")
    batches = calib_batches(n=2, batch=3, seq=16)
    targets = Compressor(model, ["mlp_down", "mlp_up"], progress=False).targets
    slots = {stat_slot(model, t).key: stat_slot(model, t) for t in targets}
    assert {s.side for s in slots.values()} == {"input", "output"}
    seen = {}
    hooks = [model.get_submodule(s.module).register_forward_hook(
        lambda _m, a, o, s=s: seen.setdefault(s.key, []).append((a[0] if s.side == "input" else o).detach()))
        for s in slots.values()]
    with torch.no_grad():
        for b in batches:
            model(input_ids=b)
    for h in hooks:
        h.remove()
    for k in (0, 1, 4):
        stats = Compressor(model, ["mlp_down", "mlp_up"], batches=batches, progress=False, skip_first=k).statistics
        for key, acts in seen.items():
            v = torch.cat([a[:, k:].reshape(-1, a.shape[-1]) for a in acts]).double()
            assert stats[key].n == 2 * 3 * (16 - k) == v.shape[0]
            torch.testing.assert_close(stats[key].sum_v, v.sum(0), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(stats[key].sum_vv, v.T @ v, rtol=1e-5, atol=1e-4)
    with pytest.raises(LordError, match="skip_first=-1 must be a non-negative integer"):
        CompressionConfig(skip_first=-1)


@pytest.mark.slow
@pytest.mark.parametrize("shape", SHAPES)
def test_asvd_is_plain_svd_at_alpha_zero_and_minimises_its_scaled_error(shape):
    """alpha = 0 scales nothing: the projector equals svd's. Any alpha: W' = U_r U_r^T W is the best rank-r
    approximation of W S in Frobenius norm after the scaling (Eckart-Young on W S), i.e. ASVD's objective."""
    W, b, X = _layer(*shape)
    scale = X.abs().mean(0)
    for r in range(1, min(shape) + 1):
        _, Wsvd = _apply("svd", W, b, X, r)
        _, W0 = _apply({"name": "asvd", "alpha": 0.0}, W, b, X, r)
        assert torch.allclose(W0, Wsvd, atol=1e-9)
        for alpha in (0.5, 1.0):
            S = scale**alpha
            _, Wa = _apply({"name": "asvd", "alpha": alpha}, W, b, X, r)
            U, sv, Vh = torch.linalg.svd(W * S, full_matrices=False)
            best = torch.linalg.norm(sv[r:])  # the Eckart-Young optimum of ||W S - M||_F over rank-r M
            assert torch.linalg.norm((W - Wa) * S) <= best * (1 + 1e-9) + 1e-12
            assert torch.linalg.matrix_rank(Wa) <= r


def test_asvd_rejects_an_alpha_outside_its_range():
    with pytest.raises(LordError, match="alpha"):
        get_method({"name": "asvd", "alpha": -1})

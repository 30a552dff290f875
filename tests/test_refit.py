"""Stage ``refit`` (lord/refit.py): the least-squares refit of B and bias on the compressed model's own inputs."""

import pytest
import torch

from conftest import calib_batches, tiny_model
from lord.compress import Compressor
from lord.ranks import RankSpec
from lord.refit import FirstPositionShare, PairMoments, refit


def _pairs(seed=0, n=600, d_out=12, r=5):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, r, generator=g) * torch.linspace(3, 0.5, r) + 1.0
    y = z @ torch.randn(r, d_out, generator=g) + 0.3 * torch.randn(n, d_out, generator=g) + 2.0
    m = PairMoments(d_out, r)
    m.update(y, z)
    return m, y.double(), z.double()


def test_the_objective_from_sums_is_the_mean_squared_residual():
    m, y, z = _pairs()
    g = torch.Generator().manual_seed(5)
    B, c = torch.randn(12, 5, generator=g, dtype=torch.float64), torch.randn(12, generator=g, dtype=torch.float64)
    direct = (y - z @ B.T - c).square().sum(1).mean()
    assert m.objective(B, c) == pytest.approx(float(direct), rel=1e-5)


@pytest.mark.parametrize("ridge", [0.0, 1e-3])
def test_the_solution_minimises_the_ridge_objective_and_keeps_biasless_rows_biasless(ridge):
    m, y, z = _pairs()
    has_bias = torch.tensor([True] * 6 + [False] * 6)
    B, c, lam = m.solve(has_bias, ridge)
    assert torch.all(c[6:] == 0)

    def ridge_obj(B_, c_):
        return m.objective(B_, c_) + lam * float(B_.square().sum())
    best = ridge_obj(B, c)
    g = torch.Generator().manual_seed(1)
    for _ in range(20):  # any other candidate with the same structure is no better
        dB = 1e-2 * torch.randn(B.shape, generator=g, dtype=torch.float64)
        dc = 1e-2 * torch.randn(c.shape, generator=g, dtype=torch.float64) * has_bias
        assert ridge_obj(B + dB, c + dc) >= best - 1e-9


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_refit_never_increases_its_objective_and_the_model_still_runs(arch):
    model = tiny_model(arch)
    batches = calib_batches()
    c = Compressor(model, kinds=["all"], group=True, batches=batches, progress=False)
    report = c.apply("lord_meanfix", RankSpec("reduction", 50, force=True))
    record = refit(model, c, report["decompositions"], batches, ridge=1e-6, progress=False)
    assert len(record["targets"]) == len(report["decompositions"])
    for layer in record["targets"]:
        assert layer["ridge_objective_after"] <= layer["ridge_objective_before"] * (1 + 1e-9) + 1e-12
    # the first block's inputs are the dense model's: its refit can only match what the method already fitted
    # on these tokens closely, so the gain shows in the later blocks
    later = [t for t in record["targets"] if t["block"] > 0]
    assert any(t["objective_after"] < 0.99 * t["objective_before"] for t in later)
    ids = torch.randint(0, 97, (1, 16))
    assert torch.isfinite(model(input_ids=ids).logits).all()


def test_the_anchored_fit_on_the_dense_inputs_is_whiten_on_its_own_outputs():
    """Block 0's MLP-down sees the dense model's inputs (x~ = x): the whole rank-r least-squares map of its
    outputs is whiten's (Eckart-Young in the metric E[x x^T]) on the same tokens."""
    model = tiny_model("llama")
    batches = calib_batches()
    c = Compressor(model, kinds=["mlp_down"], layers=[0], batches=batches, progress=False)
    name = c.targets[0].members[0]
    c.apply("whiten", RankSpec("rank", 5))
    mod = model.get_submodule(name)
    whiten = (mod[1].weight @ mod[0].weight).double()
    report = c.apply("svd", RankSpec("rank", 5))  # other starting factors: the fit replaces both
    record = refit(model, c, report["decompositions"], batches, ridge=0.0, fit="both", progress=False)
    mod = model.get_submodule(name)
    anchored = (mod[1].weight @ mod[0].weight).double()
    torch.testing.assert_close(anchored, whiten, rtol=1e-4, atol=1e-5 * float(whiten.abs().max()))
    layer = record["targets"][0]
    assert record["fit"] == "both" and layer["objective_after"] < layer["objective_before"]


def _loss_metric(c, method):
    """``refit``'s ``metric_for`` of ``anchor.metric=loss``: each decomposition's damped K-FAC ``G``."""
    from lord.curvature import curvature_for

    stats, targets = c.curvature("full"), {t.name: t for t in c.targets}
    return lambda d: method.output_metric(curvature_for(stats, targets[d.name], "full"))


def test_the_weighted_objective_from_sums_is_the_mean_weighted_residual():
    """With an output metric G the sums give ``E (y - B z - c)^T G (y - B z - c)`` and the norm ``tr(B^T G B)``."""
    from lord.curvature import Curvature, SecondMoment
    from lord.methods import get_method

    g = torch.Generator().manual_seed(3)
    G = SecondMoment(12)
    G.update(torch.randn(40, 12, generator=g) * torch.linspace(0.2, 2, 12))
    metric = get_method("kfac").output_metric(Curvature(None, [G]))
    Gm = metric(torch.eye(12, dtype=torch.float64))
    _, y, z = _pairs()
    m = PairMoments(12, 5, metric=metric)
    m.update(y.float(), z.float())
    B, c = torch.randn(12, 5, generator=g, dtype=torch.float64), torch.randn(12, generator=g, dtype=torch.float64)
    r = y - z @ B.T - c
    assert m.objective(B, c) == pytest.approx(float(((r @ Gm) * r).sum(1).mean()), rel=1e-5)
    assert m.norm(B) == pytest.approx(float(torch.trace(B.T @ Gm @ B)), rel=1e-9)
    torch.testing.assert_close(metric.root(metric.root(B)), metric(B))
    torch.testing.assert_close(metric.inv_root(metric.root(B)), B)


def test_the_anchored_fit_in_the_loss_metric_on_the_dense_inputs_is_kfac():
    """anchor.metric=loss: block 0's MLP-down sees the dense inputs (x~ = x), so the rank-r map that best reproduces
    its outputs weighed by kfac's G is kfac's own (Eckart-Young in G and E[x x^T]); the Euclidean fit is not."""
    from lord.methods import get_method

    model = tiny_model("llama")
    batches = calib_batches()
    c = Compressor(model, kinds=["mlp_down"], layers=[0], batches=batches, progress=False)
    name = c.targets[0].members[0]
    kfac = get_method("kfac")
    c.apply(kfac, RankSpec("rank", 5))
    mod = model.get_submodule(name)
    expected = (mod[1].weight @ mod[0].weight).detach().double()
    fitted = {}
    for metric in ("loss", "euclidean"):
        report = c.apply("svd", RankSpec("rank", 5))  # other starting factors: the fit replaces both
        record = refit(model, c, report["decompositions"], batches, ridge=0.0, fit="both", progress=False,
                       metric_for=_loss_metric(c, kfac) if metric == "loss" else None)
        mod = model.get_submodule(name)
        fitted[metric] = (mod[1].weight @ mod[0].weight).detach().double()
        assert record.get("metric", "euclidean") == metric
    scale = float(expected.abs().max())
    torch.testing.assert_close(fitted["loss"], expected, rtol=1e-4, atol=1e-5 * scale)
    assert float((fitted["euclidean"] - expected).abs().max()) > 1e-3 * scale


def test_a_ridge_towards_the_decomposition_returns_it_when_large_and_never_raises_its_objective():
    """anchor.prior=decomposition: the ridge term is lam ||W' - W_0||^2, so a huge ridge leaves every layer's map as
    the decomposition made it; at a moderate one the decomposition is still a zero-cost candidate, so the ridge
    objective cannot rise, and a later block's fit on the compressed inputs lowers the plain objective."""
    maps = {}
    for ridge in (1e9, 1e-2):
        model = tiny_model("llama")
        batches = calib_batches()
        c = Compressor(model, kinds=["all"], group=True, layers=[0, 1], batches=batches, progress=False)
        report = c.apply("whiten", RankSpec("reduction", 50, force=True))
        names = [d.members[0] for d in report["decompositions"] if len(d.members) == 1]

        def current():
            return {n: (model.get_submodule(n)[1].weight @ model.get_submodule(n)[0].weight).detach().double()
                    for n in names}
        maps["before"] = current()
        record = refit(model, c, report["decompositions"], batches, ridge=ridge, fit="both", progress=False,
                       prior="decomposition")
        maps[ridge] = current()
        assert record["prior"] == "decomposition"
        for layer in record["targets"]:
            assert layer["ridge_objective_after"] <= layer["ridge_objective_before"] * (1 + 1e-9) + 1e-12
    for n, W0 in maps["before"].items():
        torch.testing.assert_close(maps[1e9][n], W0, rtol=1e-4, atol=1e-5 * float(W0.abs().max()))
    assert any(float((maps[1e-2][n] - W0).abs().max()) > 1e-3 * float(W0.abs().max())
               for n, W0 in maps["before"].items())
    with pytest.raises(ValueError, match="prior must be one of"):
        refit(model, c, report["decompositions"], batches, fit="B", prior="decomposition", progress=False)


@pytest.mark.slow
def test_keep_better_never_lets_a_layers_held_out_objective_rise():
    """anchor.keep_better: a layer whose fit is worse on the held-out batches keeps its factors untouched; every
    other layer's chosen fit is no worse there than its decomposition. In the loss metric as in the Euclidean."""
    from lord.methods import get_method

    model = tiny_model("qwen2")
    batches = calib_batches(n=4)
    c = Compressor(model, kinds=["all"], group=True, batches=batches, progress=False)
    kfac = get_method("kfac")
    report = c.apply(kfac, RankSpec("reduction", 50, force=True))
    before = {d.name: [p.detach().clone() for p in model.get_submodule(d.members[0]).parameters()]
              for d in report["decompositions"]}
    record = refit(model, c, report["decompositions"], batches, fit="both", holdout=0.25, ridges=[0.0, 1e-2],
                   progress=False, metric_for=_loss_metric(c, kfac), keep_better=True)
    assert record["keep_better"] and record["metric"] == "loss"
    for layer in record["targets"]:
        if layer.get("kept"):
            assert layer["held_out_after"] >= layer["held_out_before"]
            now = list(model.get_submodule(layer["name"].split("+")[0]).parameters())
            assert all(torch.equal(a, b) for a, b in zip(before[layer["name"]], now))
        else:
            assert layer["held_out_after"] < layer["held_out_before"]
    assert torch.isfinite(model(input_ids=torch.randint(0, 97, (1, 16))).logits).all()


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_the_anchored_fit_lowers_its_ridge_objective_and_chooses_the_ridge_on_held_out_batches(arch):
    model = tiny_model(arch)
    batches = calib_batches(n=4)
    c = Compressor(model, kinds=["all"], group=True, batches=batches, progress=False)
    report = c.apply("whiten", RankSpec("reduction", 50, force=True))
    record = refit(model, c, report["decompositions"], batches, fit="both", holdout=0.25, ridges=[1e-6, 1e-2, 1.0],
                   progress=False)
    assert record["held_out_batches"] == 1 and len(record["targets"]) == len(report["decompositions"])
    for layer in record["targets"]:
        assert layer["ridge_objective_after"] <= layer["ridge_objective_before"] * (1 + 1e-9) + 1e-12
        assert layer["held_out_after"] == min(layer["held_out_by_ridge"])
        assert layer["ridge"] == [1e-6, 1e-2, 1.0][layer["held_out_by_ridge"].index(layer["held_out_after"])]
    assert torch.isfinite(model(input_ids=torch.randint(0, 97, (1, 16))).logits).all()


def test_the_first_position_share_is_that_positions_part_of_the_squared_residual():
    g = torch.Generator().manual_seed(3)
    y, z = torch.randn(2, 7, 6, generator=g), torch.randn(2, 7, 4, generator=g)
    y[:, 0] *= 10  # a sink-like first position
    M, c = torch.randn(6, 4, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    share = FirstPositionShare(M, c)
    for b in range(2):  # batch by batch, as the refit sees them
        share.update(y[b:b + 1], z[b:b + 1])
    r = (y.double() - z.double() @ M.T - c).square().sum(-1)
    assert share.share() == pytest.approx(float(r[:, 0].sum() / r.sum()), rel=1e-5) and share.share() > 1 / 7


@pytest.mark.parametrize("fit", ["B", "both"])
def test_skip_first_leaves_the_leading_positions_out_of_the_fit_and_still_never_raises_its_objective(fit):
    """The fit counts ``T - k`` positions of every window (the blocks still run on all ``T``); its guarantee holds on
    the tokens it counts, and with ``k = 0`` it is the default fit."""
    runs = {}
    for skip in (0, 3):
        model = tiny_model("llama")
        batches = calib_batches()
        c = Compressor(model, kinds=["all"], group=True, batches=batches, progress=False)
        report = c.apply("whiten", RankSpec("reduction", 50, force=True))
        runs[skip] = refit(model, c, report["decompositions"], batches, ridge=1e-6, fit=fit, progress=False,
                           skip_first=skip)
        n, T = sum(b.shape[0] for b in batches), batches[0].shape[1]
        assert runs[skip]["skip_first"] == skip
        for layer in runs[skip]["targets"]:
            assert layer["tokens"] == n * (T - skip)
            assert layer["ridge_objective_after"] <= layer["ridge_objective_before"] * (1 + 1e-9) + 1e-12
            assert 0 < layer["first_position_residual_share"] < 1
    # the share is measured on the factors in place before the fit, on every position: the same with or without skip
    for a, b in zip(runs[0]["targets"], runs[3]["targets"]):
        if a["block"] == 0:
            assert a["first_position_residual_share"] == pytest.approx(b["first_position_residual_share"], rel=1e-4)


def _refitted_twice(order: str):
    """A tiny llama compressed with whiten, refitted in ``order``, then refitted again: the second run's objective
    before its fit is each layer's objective on the inputs it sees after the first refit."""
    model = tiny_model("llama")
    batches = calib_batches()
    c = Compressor(model, kinds=["all"], group=False, batches=batches, progress=False)
    report = c.apply("whiten", RankSpec("reduction", 50, force=True))
    first = refit(model, c, report["decompositions"], batches, ridge=1e-6, progress=False, order=order)
    second = refit(model, c, report["decompositions"], batches, ridge=1e-6, progress=False, order=order)
    return first, second


def test_a_sublayer_order_refit_holds_on_the_inputs_each_layer_sees_afterwards():
    """Refitting in forward order, each group on its refitted predecessors' outputs, leaves every layer fitted to the
    inputs it gets: a second refit finds each layer's objective where the first left it. Fitting a block's layers
    together (the default) does not: o_proj and down_proj then see other inputs than they were fitted on."""
    first, second = _refitted_twice("sublayer")
    assert first["order"] == "sublayer" and len(first["targets"]) == len(second["targets"])
    for a, b in zip(first["targets"], second["targets"]):
        assert a["name"] == b["name"]
        assert b["objective_before"] == pytest.approx(a["objective_after"], rel=1e-3, abs=1e-9)
    first, second = _refitted_twice("block")
    stale = [a["name"] for a, b in zip(first["targets"], second["targets"])
             if abs(b["objective_before"] - a["objective_after"]) > 0.01 * a["objective_after"]]
    assert stale and all(n.endswith(("o_proj", "down_proj")) for n in stale)


def test_forward_groups_are_the_layers_that_read_one_input_in_call_order():
    from lord.calibration import block_inputs
    from lord.refit import forward_groups

    model = tiny_model("llama")
    batches = calib_batches()
    c = Compressor(model, kinds=["all"], group=False, batches=batches, progress=False)
    report = c.apply("whiten", RankSpec("reduction", 50, force=True))
    block0 = [d for d in report["decompositions"] if d.block == 0]
    states = block_inputs(model, model.model.layers[0], batches, torch.device("cpu"))
    names = [[d.name.rsplit(".", 1)[-1] for d in g] for g in forward_groups(model.model.layers[0], model,
                                                                             block0[::-1], states)]
    assert names == [["q_proj", "k_proj", "v_proj"], ["o_proj"], ["gate_proj", "up_proj"], ["down_proj"]]


def test_refit_and_anchor_settings_name_their_results_and_the_defaults_keep_the_old_names():
    """Results of one preset that differ only in refit settings must not share a name; results at the defaults (all
    published refit and anchor runs) keep theirs."""
    from lord.stages.anchor import Anchor
    from lord.stages.refit import Refit

    assert Refit.tag({"refit": None}) == "" and Anchor.tag({}) == ""
    assert Anchor.tag({"anchor": {"ridges": [1e-6, 1e-4, 1e-3, 1e-2, 1e-1], "holdout": 0.25}}) == ""
    assert Refit.tag({"refit": {"skip_first": 1}}) == "-skip1"
    assert Refit.tag({"refit": {"ridges": [1e-6, 1], "holdout": 0.25}}) == "-ridges1e-06_1-holdout0.25"
    assert Refit.tag({"refit": {"ridge": 0.01, "order": "sublayer"}}) == "-ridge0.01-sublayer"
    assert Anchor.tag({"anchor": {"holdout": 0.5, "order": "sublayer"}}) == "-holdout0.5-sublayer"
    assert Anchor.tag({"anchor": {"metric": "loss", "keep_better": True}}) == "-loss-keep"
    assert Anchor.tag({"anchor": {"metric": "euclidean", "keep_better": False}}) == ""
    assert Anchor.tag({"anchor": {"prior": "decomposition"}}) == "-prior"

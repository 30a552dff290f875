"""The loss-aware method ``kfac`` (lord/methods/kfac.py, lord/curvature.py): its statistics are the loss's own
gradients, it equals ``whiten`` when G = I, and its rank-r map minimises the K-FAC loss estimate."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import VOCAB, calib_batches, tiny_model
from lord.compress import Compressor
from lord.curvature import collect_curvature, curvature_for
from lord.errors import LordError
from lord.methods import get_method
from lord.ranks import RankSpec


def _kfac(**options):
    return get_method({"name": "kfac", **options})


def test_curvature_statistics_are_the_loss_gradients_at_each_output():
    """G of a layer equals the mean outer product of dLoss/dy computed directly by autograd; A the inputs'."""
    model = tiny_model("llama")
    c = Compressor(model, kinds=["mlp_down", "attn_qkv"], group=False)
    batches = calib_batches(n=1, batch=2, seq=12)
    stats = collect_curvature(model, c.targets, batches, "full", progress=False)
    name = "model.layers.1.mlp.down_proj"
    outs, ins = {}, {}
    mod = model.get_submodule(name)

    def keep(_m, args, out):
        ins["x"], outs["y"] = args[0], out
    h = mod.register_forward_hook(keep)
    for p in model.parameters():
        p.requires_grad_(False)
    gs = []
    for window in batches[0].split(1):
        emb = model.get_input_embeddings()(window).detach().requires_grad_(True)
        logits = model(inputs_embeds=emb).logits[:, :-1]
        outs["y"].retain_grad()
        F.cross_entropy(logits.reshape(-1, VOCAB), window[:, 1:].reshape(-1), reduction="sum").backward()
        gs.append(outs["y"].grad.reshape(-1, outs["y"].shape[-1]))
    h.remove()
    g = torch.cat(gs).double()
    G = stats[f"G:{name}"].matrix()
    torch.testing.assert_close(G, g.T @ g / g.shape[0], rtol=1e-4, atol=1e-9)
    assert stats[f"G:{name}"].n == g.shape[0]
    target = next(t for t in c.targets if t.name == name)
    A = curvature_for(stats, target, "full").A.matrix()
    assert A.shape == (64, 64) and torch.allclose(A, A.T)


def test_kfac_with_identity_output_metric_is_whiten():
    """G = I: the same rank-r maps as whiten (given the same input second moment), for every layer kind, tall and
    wide, and for groups."""
    from lord.calibration import Moments
    from lord.curvature import Curvature
    from lord.methods.base import moment_basis
    from lord.structure import dense_W_b

    model = tiny_model("qwen2")
    for group in (False, True):
        c = Compressor(model, kinds=["all"], group=group)
        stats = collect_curvature(model, c.targets, calib_batches(), "identity", progress=False)
        kfac = _kfac(output_metric="identity")
        for t in c.targets:
            W, b = dense_W_b(model, t.members)
            A = curvature_for(stats, t, "identity").A
            m = Moments(A.dim)
            m.sum_vv, m.n = A.sum.double(), A.n
            kb = kfac.basis(W, Curvature(A, None), "both")
            wb = moment_basis(W, m, "input", centred=False, method="whiten")
            for r in (1, 3, 8):
                A1, B1, _ = kfac.factors(kb, W, b, r)
                A2, B2, _ = get_method("whiten").factors(wb, W, b, r)
                torch.testing.assert_close(B1 @ A1, B2 @ A2, rtol=1e-7, atol=1e-9)


def test_kfac_minimises_the_curvature_weighted_error_among_rank_r_maps():
    """||G^1/2 (W - W') A^1/2|| is smallest for kfac's W' (against whiten's, plain SVD's and random rank-r
    perturbations of it), and the error falls with the rank."""
    g = torch.Generator().manual_seed(0)
    d_out, d_in, r = 12, 9, 4
    W = torch.randn(d_out, d_in, generator=g, dtype=torch.float64)
    X = torch.randn(200, d_in, generator=g, dtype=torch.float64) @ torch.randn(d_in, d_in, generator=g,
                                                                                dtype=torch.float64)
    Y = torch.randn(200, d_out, generator=g, dtype=torch.float64) * torch.linspace(0.1, 3, d_out, dtype=torch.float64)
    from lord.curvature import Curvature, SecondMoment

    A, G = SecondMoment(d_in), SecondMoment(d_out)
    A.update(X), G.update(Y)
    method = _kfac(damping=1e-9)
    basis = method.basis(W, Curvature(A, [G]), "both")
    Am, Gm = A.matrix(), G.matrix()

    def loss(Wp):
        D = W - Wp
        return float(torch.trace(Gm @ D @ Am @ D.T))

    errors = []
    for rank in range(1, d_in + 1):
        Af, Bf, _ = method.factors(basis, W, None, rank)
        errors.append(loss(Bf @ Af))
        if rank == r:
            best, best_A, best_B = Bf @ Af, Af, Bf
    assert all(a >= b - 1e-9 for a, b in zip(errors, errors[1:])) and errors[-1] < 1e-6 * errors[0]
    for _ in range(20):
        U = torch.linalg.qr(torch.randn(d_out, r, generator=g, dtype=torch.float64))[0]
        assert loss(U @ U.T @ W) >= loss(best) - 1e-9
        nudge = lambda M: M + 1e-3 * torch.randn(M.shape, generator=g, dtype=torch.float64)  # noqa: E731
        assert loss(nudge(best_B) @ nudge(best_A)) >= loss(best) - 1e-9  # a nearby rank-r map


def test_diagonal_metric_and_errors():
    model = tiny_model("llama")
    c = Compressor(model, kinds=["mlp_up"], batches=calib_batches(n=1))
    report = c.apply(_kfac(output_metric="diagonal"), RankSpec("reduction", 50))
    assert report["decompositions"] and c.events["curvature_from_cache"] is False
    with pytest.raises(LordError, match="output_metric='diag' is unknown"):
        _kfac(output_metric="diag")
    with pytest.raises(LordError, match="damping=0 must be a number > 0"):
        _kfac(damping=0)
    with pytest.raises(LordError, match="sequential calibration"):
        c.apply(_kfac(), RankSpec("reduction", 50), calibration="sequential")


def test_statistics_that_do_not_fit_are_refused_before_weights_load(monkeypatch):
    import lord.methods.kfac as kfac_module
    from lord.params import meta_model
    from transformers import AutoConfig

    model = meta_model(AutoConfig.for_model("qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                                            num_attention_heads=14, num_key_value_heads=2, vocab_size=1000))
    targets = Compressor(model, kinds=["all"], progress=False).targets
    monkeypatch.setattr(kfac_module, "_available_memory", lambda: 4 * 2**30)
    with pytest.raises(LordError, match=r"needs 6\.\d GiB .* use method.output_metric=diagonal"):
        _kfac().check_targets(model, targets)
    _kfac(output_metric="diagonal").check_targets(model, targets)  # diag G and A: ~2.5 GiB


def test_a_method_option_off_its_default_names_its_own_result_folder():
    """Two runs of one point that differ only in a method option get different result names (the preset test
    demands distinct names); at the defaults the folder is the method's name, as every published result has it."""
    from hydra import compose, initialize_config_dir

    from experiments import records

    conf = str(Path(__file__).resolve().parents[1] / "conf")
    stems = {}
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        for extra in ([], ["method.damping=0.1"], ["method.output_metric=diagonal"], ["method.damping=0.01"]):
            cfg = compose("config", overrides=["method=kfac", "layers=all", "rank.unit=budget", "rank.value=10",
                                               *extra])
            stems[tuple(extra)] = records.result_stem(cfg, records.validate(cfg)[1]).parent.parent.name
    assert stems == {(): "kfac", ("method.damping=0.1",): "kfac-damping0.1",
                     ("method.output_metric=diagonal",): "kfac-diagonal", ("method.damping=0.01",): "kfac"}

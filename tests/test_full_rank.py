"""At full rank the projections are the identity on W's column space, so the model must be unchanged —
except ``lord`` on a tall layer with a bias, which drops exactly the bias component outside that space."""

import copy

import pytest
import torch

from conftest import ARCHS, calib_batches, tiny_model
from lord.architectures import BLOCK_KINDS, architecture_for
from lord.compress import CompressionConfig, compress_model
from lord.modules import dense_weight
from lord.ranks import RankSpec

FULL = RankSpec("reduction", 0, force=True)


def _compress(model, method, kinds, group=False, calibration="oneshot"):
    m = copy.deepcopy(model)
    compress_model(m, CompressionConfig(method=method, kinds=kinds, rank=FULL, group=group, calibration=calibration),
                   batches=calib_batches(), progress=False)
    return m


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", ["svd", "whiten", "lord_meanfix", "asvd"])
@pytest.mark.parametrize("group", [False, True])
def test_full_rank_reproduces_logits(arch, method, group, probe_ids):
    model = tiny_model(arch)
    ref = model(probe_ids).logits
    out = _compress(model, method, ["all"], group)(probe_ids).logits
    assert torch.allclose(out, ref, atol=1e-4), (out - ref).abs().max()


def _lord_exact(model, kind):
    arch = architecture_for(model)
    for rel in arch.kinds[kind]:
        W, b = dense_weight(model.get_submodule(f"{arch.blocks}.0.{rel}"))
        if b is not None and W.shape[0] > W.shape[1]:
            return False
    return True


@pytest.mark.parametrize("arch", ARCHS)
def test_lord_full_rank_exact_where_maths_says(arch, probe_ids):
    model = tiny_model(arch)
    ref = model(probe_ids).logits
    kinds = architecture_for(model).kinds
    exact = [k for k in BLOCK_KINDS if k in kinds and _lord_exact(model, k)]
    assert exact, "every architecture has at least one kind where lord is exact"
    out = _compress(model, "lord", exact)(probe_ids).logits
    assert torch.allclose(out, ref, atol=1e-4), (out - ref).abs().max()


@pytest.mark.parametrize("arch", ARCHS)
def test_lord_drops_exactly_the_out_of_span_output_mean(arch):
    """Per tall biased layer, on the calibration inputs: y' - y = -(I - B B^T) ybar.

    Derivation: with x = mu + d and d in the range of Cov(x), B B^T W d = W d at full rank, so
    y' - y = B B^T (W x + b) - (W x + b) = -(I - B B^T)(W mu + b). When Cov(x) has full rank this is
    the dropped bias -(I - B B^T) b; after a LayerNorm Cov(x) is singular and W mu contributes too.
    """
    model = tiny_model(arch)
    arch_map = architecture_for(model)
    inexact = [k for k in BLOCK_KINDS if k in arch_map.kinds and not _lord_exact(model, k)]
    if not inexact:
        pytest.skip(f"{arch} has no tall layer with a bias")
    name = f"{arch_map.blocks}.0.{arch_map.kinds[inexact[0]][0]}"
    dense = copy.deepcopy(model.get_submodule(name))
    seen = []
    handle = model.get_submodule(name).register_forward_hook(
        lambda m, a, o: seen.append(a[0].reshape(-1, a[0].shape[-1])))
    with torch.no_grad():
        for batch in calib_batches():
            model(batch)
    handle.remove()
    X = torch.cat(seen)
    compressed = _compress(model, "lord", [inexact[0]]).get_submodule(name)
    with torch.no_grad():
        y, y2 = dense(X).double(), compressed(X).double()
    ybar = y.mean(0)
    B = compressed[1].weight.detach().double()
    dropped = ybar - B @ (B.T @ ybar)
    assert dropped.norm() > 1e-3  # the effect is real in these models
    assert torch.allclose(y2 - y, -dropped.expand_as(y), atol=1e-4), (y2 - y + dropped).abs().max()
    logits_change = (model(X[:1, :0].new_zeros(1, 8, dtype=torch.long)).logits
                     - _compress(model, "lord", [inexact[0]])(X[:1, :0].new_zeros(1, 8, dtype=torch.long)).logits)
    assert logits_change.abs().max() > 1e-4  # so end to end lord is not exact there


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_bigcode"])
@pytest.mark.parametrize("method", ["whiten", "lord_meanfix"])
def test_sequential_full_rank_reproduces_logits(arch, method, probe_ids):
    model = tiny_model(arch)
    ref = model(probe_ids).logits
    out = _compress(model, method, ["all"], group=True, calibration="sequential")(probe_ids).logits
    assert torch.allclose(out, ref, atol=1e-4)


def test_embed_and_lm_head_full_rank_on_tied_model(probe_ids):
    model = tiny_model("gpt2")  # GPT-2 ties its LM head to the token embedding
    assert model.config.tie_word_embeddings
    ref = model(probe_ids).logits
    out = _compress(model, "whiten", ["embed", "lm_head"])
    assert not out.config.tie_word_embeddings
    assert torch.allclose(out(probe_ids).logits, ref, atol=1e-4)

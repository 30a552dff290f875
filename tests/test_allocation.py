"""Rank allocation at a parameter budget (lord/allocation/) and ASVD through the compressor: the budget's
guarantees as properties over random spectra, each criterion's defining behaviour, and end-to-end runs."""

import random

import pytest
import torch

from conftest import calib_batches, tiny_model
from lord.allocation import ALLOCATORS, Candidate, allocate
from lord.allocation.base import _moves, allowed_parameters
from lord.compress import Compressor
from lord.errors import LordError
from lord.ranks import RankSpec

CRITERIA = ALLOCATORS.names()


def _candidates(seed: int, n: int = 12) -> list[Candidate]:
    """Matrices of mixed shapes (square, tall, wide, grouped), biases, and spectra of different decay and scale."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        d_out, d_in = rng.choice([(64, 64), (128, 48), (48, 128), (96, 32)])
        bias = rng.choice([0, d_out])
        d_min = min(d_out, d_in)
        decay = rng.uniform(0.01, 0.3)
        spectrum = torch.exp(-decay * torch.arange(d_min, dtype=torch.float64)) * 10 ** rng.uniform(1, 5)
        c = Candidate(f"t{i}", rng.choice(["mlp_down", "attn_out"]), d_out * d_in + bias, d_in + d_out, bias,
                      d_min, spectrum, per_vector=True)
        # a 'measured' cost per rank: the truncation loss, noisy (what a KL table looks like to the solver)
        c.costs = {r: c.loss(r) * rng.uniform(0.5, 2) for r in range(1, d_min + 1)}
        out.append(c)
    return out


@pytest.mark.parametrize("criterion", CRITERIA)
@pytest.mark.parametrize("step", [1, 8])
def test_allocation_meets_the_budget_within_one_rank_step_and_never_adds_parameters(criterion, step):
    for seed in range(4):
        cands = _candidates(seed)
        for percent in (5, 10, 20, 30, 40):
            ranks = allocate(cands, percent, criterion, step)
            allowed = allowed_parameters(cands, percent)
            kept = sum(c.kept(ranks[c.name]) for c in cands)
            assert kept <= allowed, (criterion, percent)
            for c in cands:
                r = ranks[c.name]
                if r is not None:
                    assert r % step == 0 and step <= r <= c.d_min
                    assert c.kept(r) < c.dense_params  # a rank that adds (or saves no) parameters is never given
                # within one rank step: no single step back towards dense still fits
                assert all(added > allowed - kept for _, added, _ in _moves(c, r, step, down=False)), (c.name, r)


def test_uniform_is_param_fraction_and_greedy_spends_the_budget_where_loss_is_cheapest():
    cands = [Candidate(f"t{i}", "mlp_down", 64 * 64, 128, 0, 64, torch.ones(64)) for i in range(4)]
    proposal = ALLOCATORS.get("uniform")().propose(cands, 30, 1)
    assert set(proposal.values()) == {RankSpec("param_fraction", 0.7).resolve(64, 64)}
    # one matrix whose spectrum lives in 8 directions: dropping the rest costs it nothing
    free = Candidate("free", "mlp_down", 64 * 64, 128, 0, 64, torch.cat([torch.ones(8), torch.zeros(56)]))
    ranks = allocate(cands + [free], 10, "greedy")
    # the budget (10 % of 5 x 4096) is all taken from it, at the largest rank that meets it: 16 x 128 = 0.9 x 5 x
    # 4096 - 4 x 4096 parameters kept; the others stay dense
    assert ranks["free"] == 16 and all(ranks[c.name] is None for c in cands)
    assert free.loss(16) == 0


def test_svdllm_v2_compresses_the_matrix_with_the_smaller_truncation_loss_more():
    low = Candidate("low", "mlp_down", 64 * 64, 128, 0, 64, torch.exp(-0.3 * torch.arange(64.0)), per_vector=True)
    high = Candidate("high", "mlp_down", 64 * 64, 128, 0, 64, torch.exp(-0.01 * torch.arange(64.0)), per_vector=True)
    ranks = ALLOCATORS.get("svdllm_v2")().propose([low, high], 30, 1)
    assert ranks["low"] < ranks["high"]
    tiny = Candidate("tiny", "mlp_down", 64 * 64, 128, 0, 64, torch.full((64,), 1e-9))  # a total, below 1
    with pytest.raises(LordError, match="L > 1"):
        allocate([tiny, high], 30, "svdllm_v2")


def test_a_budget_larger_than_the_selection_can_remove_is_one_clear_error():
    with pytest.raises(LordError, match="more than this selection can remove"):
        allocate(_candidates(0), 99, "uniform")
    with pytest.raises(LordError, match="in \\(0, 100\\)"):
        RankSpec("budget", 100)
    with pytest.raises(LordError, match="unknown rank allocation"):
        RankSpec("budget", 20, allocation="magic")


def _budget_run(model, batches, method, criterion, percent=25):
    dense = sum(p.numel() for p in model.parameters())
    c = Compressor(model, kinds=["all"], group=True, batches=batches, progress=False)
    c.sensitivity = {"windows": calib_batches(seed=9, n=1, batch=2, seq=16)[0], "grid": [20, 40, 60]}  # 'measured'
    report = c.apply(method, RankSpec("budget", percent, allocation=criterion))
    alloc = c.events["allocation"]
    after = sum(p.numel() for p in model.parameters())
    assert alloc["removed_percent"] >= 25
    assert dense - after == pytest.approx(alloc["selection_params"] * alloc["removed_percent"] / 100)
    assert report["decompositions"]  # something was decomposed
    return c


@pytest.mark.slow
@pytest.mark.parametrize("method", ["whiten", "lord_meanfix", "asvd"])
@pytest.mark.parametrize("criterion", CRITERIA)
def test_a_budget_removes_its_share_of_the_selected_parameters_from_the_model(method, criterion):
    # weights of a trained model's scale (initializer_range 0.5): svdllm_v2's 1/log(L) rule needs truncation
    # losses above 1, which the default tiny model's near-zero outputs do not reach
    model = tiny_model("qwen2", initializer_range=0.5)
    c = _budget_run(model, calib_batches(n=8), method, criterion)
    ids = torch.randint(0, 97, (1, 16))
    assert torch.isfinite(model(input_ids=ids).logits).all()
    if criterion != "uniform":  # a heterogeneous allocation: ranks differ within a kind
        c.restore()
        kinds = {}
        for d in c.plan(method, RankSpec("budget", 25, allocation=criterion)):
            kinds.setdefault(d.decomposition.kind, set()).add(d.decomposition.rank)
        assert any(len(r) > 1 for r in kinds.values()) or len(c.events["allocation"]["dense_targets"]) > 0


def test_asvd_runs_oneshot_only_and_its_channel_statistics_are_cached(tmp_path):
    from lord.cache import CompressionCache

    cache = CompressionCache(tmp_path, "tiny")
    model = tiny_model("llama")
    c = Compressor(model, kinds=["mlp_down", "attn_qkv"], batches=calib_batches(), cache=cache, reuse_bases=True,
                   progress=False)
    c.apply("asvd", RankSpec("reduction", 50))
    assert c.events["channel_statistics_from_cache"] is False
    c2 = Compressor(tiny_model("llama"), kinds=["mlp_down", "attn_qkv"], batches=calib_batches(), cache=cache,
                    reuse_bases=True, progress=False)
    c2.apply("asvd", RankSpec("reduction", 50))
    assert c2.events["channel_statistics_from_cache"] is True
    for k, v in c.channel_statistics.items():
        assert torch.equal(v.sum_abs, c2.channel_statistics[k].sum_abs)
    with pytest.raises(LordError, match="oneshot"):
        Compressor(tiny_model("llama"), batches=calib_batches(), progress=False).apply(
            "asvd", RankSpec("reduction", 50), calibration="sequential")


def _brute_force(items, allowed):
    import itertools

    best = None
    for choice in itertools.product(*[range(len(o)) for o in items]):
        kept = sum(items[i][o][0] for i, o in enumerate(choice))
        cost = sum(items[i][o][1] for i, o in enumerate(choice))
        if kept <= allowed and (best is None or cost < best[0] - 1e-12):
            best = (cost, choice)
    return best


def test_the_integer_program_finds_the_brute_force_optimum_and_never_exceeds_the_budget():
    from lord.allocation.knapsack import solve_choice

    rng = random.Random(3)
    for trial in range(25):
        items = [[(rng.randint(1, 60), rng.uniform(0, 10)) for _ in range(rng.randint(1, 4))] for _ in range(5)]
        least = sum(min(k for k, _ in o) for o in items)
        allowed = rng.randint(least, least + 120)
        chosen = solve_choice(items, allowed)
        assert sum(items[i][o][0] for i, o in enumerate(chosen)) <= allowed
        cost = sum(items[i][o][1] for i, o in enumerate(chosen))
        assert cost == pytest.approx(_brute_force(items, allowed)[0], abs=1e-6), trial
    with pytest.raises(LordError, match="no choice of options fits the budget"):
        solve_choice([[(5, 1.0)], [(7, 0.0)]], 11)


@pytest.mark.slow
def test_the_sensitivity_table_is_measured_once_and_is_the_full_models_kl():
    """Each entry is the KL of the whole model with only that matrix at that rank (the block-runner shortcut
    changes nothing); a second allocation, another budget, reads the cached table: no forward pass."""
    import torch.nn.functional as F

    from lord.cache import CompressionCache
    from lord.structure import Planned

    model = tiny_model("qwen2", initializer_range=0.5)
    windows = calib_batches(seed=9, n=1, batch=2, seq=16)[0]
    cache_root = __import__("tempfile").mkdtemp()
    cache = CompressionCache(cache_root, "tiny")

    def compressor():
        c = Compressor(model, kinds=["all"], batches=calib_batches(n=4), cache=cache, reuse_bases=True,
                       progress=False)
        c.sensitivity = {"windows": windows, "grid": [25, 50]}
        return c

    c = compressor()
    c.apply("whiten", RankSpec("budget", 20, allocation="measured"))
    first = c.events["sensitivity"]
    assert first["from_cache"] == 0 and first["forward_passes"] > 1 and first["total"]["seconds"] > 0
    c.restore()
    # one entry against the whole model
    from lord.methods import get_method
    from lord.sensitivity import measure_sensitivities

    method = get_method("whiten")
    cands = c._candidates(method, {t.name: c.basis(method, t, c.statistics_for(method)).spectrum for t in c.targets})
    table, _ = measure_sensitivities(c, method, cands, windows, [25, 50], 1, None, progress=False)
    with torch.no_grad():
        dense = F.log_softmax(model(input_ids=windows).logits.float(), -1)
    t, shape = c._shapes(method)[-3]
    r = sorted(table[t.name])[0]
    c.swap_in(method, [Planned(t, __import__("dataclasses").replace(shape, rank=r))])
    with torch.no_grad():
        lp = F.log_softmax(model(input_ids=windows).logits.float(), -1)
    c.restore()
    assert float((dense.exp() * (dense - lp)).sum(-1).mean()) == pytest.approx(table[t.name][r], rel=1e-4, abs=1e-9)
    second = compressor()
    second.apply("whiten", RankSpec("budget", 30, allocation="measured"))
    assert second.events["sensitivity"]["from_cache"] == second.events["sensitivity"]["targets"]
    assert second.events["sensitivity"]["forward_passes"] == 0


def test_another_grid_measures_only_the_ranks_the_table_lacks_and_is_offered_only_its_own():
    """The table keeps one KL per (matrix, rank): a coarser grid whose ranks are cached measures nothing and offers
    only its ranks; a finer one measures only the new ranks, and the shared ranks keep their values; a table of
    the older layout (its key named the grid) fills in what the new one lacks, and is kept in it."""
    import shutil

    from lord.allocation.base import rank_options
    from lord.cache import CompressionCache
    from lord.methods import get_method
    from lord.sensitivity import measure_sensitivities, table_key

    model = tiny_model("llama", initializer_range=0.5)
    windows = calib_batches(seed=9, n=1, batch=1, seq=8)[0]
    root = __import__("tempfile").mkdtemp()
    c = Compressor(model, kinds=["mlp_down", "attn_out"], batches=calib_batches(n=2), progress=False,
                   cache=CompressionCache(root, "tiny"))
    method = get_method("whiten")
    stats = c.statistics_for(method)
    cands = c._candidates(method, {t.name: c.basis(method, t, stats).spectrum for t in c.targets})
    key = table_key(c, method, c._statistics_key_for(method), windows)
    table_file = c.cache.root / "sensitivity" / f"{key}.json"

    def measure(grid, older=()):
        return measure_sensitivities(c, method, cands, windows, grid, 1, table_file, False, older)

    fine, first = measure([25, 50])
    assert first["options_measured"] == first["options"] == sum(len(rank_options(x, [25, 50], 1)) - 1 for x in cands)
    coarse, second = measure([50])
    assert second["options_measured"] == 0 and second["forward_passes"] == 0
    for x in cands:
        assert list(coarse[x.name]) == rank_options(x, [50], 1)[1:]
        assert all(coarse[x.name][r] == fine[x.name][r] for r in coarse[x.name])
    finer, third = measure([25, 50, 75])
    new = sum(len(set(rank_options(x, [25, 50, 75], 1)) - set(rank_options(x, [25, 50], 1))) for x in cands)
    assert third["options_measured"] == new > 0 and third["forward_passes"] == new + 1
    assert all(finer[x.name][r] == fine[x.name][r] for x in cands for r in fine[x.name])
    older = table_file.with_name("older.json")
    shutil.move(table_file, older)
    measure([50])  # a new-layout table with only the 50 % ranks; the older table holds the rest
    again, fourth = measure([25, 50, 75], (older,))
    assert fourth["forward_passes"] == 0 and fourth["total"]["forward_passes"] > third["total"]["forward_passes"]
    assert again.keys() == finer.keys()
    assert all(again[n] == pytest.approx(finer[n], rel=1e-6) for n in finer)
    older.unlink()
    assert measure([25, 75])[1]["forward_passes"] == 0  # kept in the new layout's file


def test_an_exact_allocation_refuses_a_budget_its_options_cannot_meet_before_any_statistics():
    from lord.allocation import check_budget

    cands = _candidates(1)
    check_budget(cands, 40, 1, grid=[10, 50])
    with pytest.raises(LordError, match="largest option, 30 % removed.*sensitivity.grid"):
        check_budget(cands, 40, 1, grid=[10, 30])


def test_a_measured_run_names_only_the_kl_table_settings_that_differ_from_the_defaults():
    from lord.identity import ADDED_KEYS
    from lord.naming import sensitivity_tag

    default = dict(ADDED_KEYS["sensitivity"])
    assert sensitivity_tag({"sensitivity": default}) == sensitivity_tag({}) == ""
    assert sensitivity_tag({"sensitivity": {**default, "grid": [30, 70]}}) == "-grid30.70"
    assert sensitivity_tag({"sensitivity": {**default, "grid": [12.5], "windows": 2, "seq_len": 128}}) == \
        "-grid12.5-klwindows2-kllen128"

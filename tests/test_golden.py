"""Golden numbers: the real pipeline on the zoo's SmolLM2-135M reproduces tests/golden/smollm2-quick.json.

A change that moves any perplexity by more than the file's ``rtol`` (derived from the measured 1-vs-2-thread
variation, see ``experiments/benchmarks/golden.py``) or any parameter count at all fails here; a number that
moves on purpose is regenerated with ``python -m experiments.benchmarks.golden --write`` in the commit that
explains why.
"""

import json
from importlib import metadata

import pytest

from experiments.benchmarks.golden import GOLDEN, compare, measure
from lord.zoo import cache_root

GOLD = json.loads(GOLDEN.read_text())


def test_the_golden_file_was_made_with_the_pinned_converter():
    # transformers and gguf convert the GGUF weights, so they are part of what the numbers mean
    for package in ("transformers", "gguf", "torch"):  # torch: the release, whatever its build (+cpu, +cu12x)
        assert metadata.version(package).split("+")[0] == GOLD["versions"][package].split("+")[0], (
            f"{package} {metadata.version(package)} is installed but the golden numbers were made with "
            f"{GOLD['versions'][package]}: install the pinned version (requirements.txt) or regenerate and explain")


def test_the_tolerance_is_far_above_what_varies_and_below_what_matters():
    assert GOLD["rtol"] >= 100 * GOLD["measured_variation"]["threads_1_vs_2"]
    assert GOLD["rtol"] <= 0.005  # a 3 % (or even 0.5 %) shift of any number fails


@pytest.mark.slow
def test_golden_numbers(tmp_path, smollm2):
    cache = tmp_path / "cache"  # fresh statistics, bases and dense baseline: nothing is reused from earlier code
    cache.mkdir()
    (cache / "zoo").symlink_to(cache_root().resolve() / "zoo")
    measured = measure(cache)
    assert measured["n_validation_tokens"] == GOLD["n_validation_tokens"]
    assert compare(measured, GOLD) == []
    # and the ordering the maths guarantees per layer still shows end to end on this model
    p = measured["perplexity"]
    for red in (30, 60):
        assert p[f"lord_meanfix@{red}"] <= p[f"lord@{red}"] and p[f"whiten@{red}"] < p[f"svd@{red}"]
    assert all(p[k] > p["dense"] for k in p if k != "dense")


@pytest.mark.parametrize("shift", [1.03, 0.97])
def test_a_three_percent_shift_would_fail(shift):
    moved = {"perplexity": {k: v * shift for k, v in GOLD["perplexity"].items()}, "parameters": GOLD["parameters"]}
    assert len(compare(moved, GOLD)) == len(GOLD["perplexity"])

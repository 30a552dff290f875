import os

import pytest
import torch

# the suite uses the one cache root (lord.zoo.cache_root: $LORD_CACHE, else ~/.cache/lord), so a zoo model
# fetched by the experiments is not fetched again; tests that must start empty use a temporary folder
#
# threads: the cores shared among pytest-xdist's workers (pytest.ini runs one per core, at most 4), so that two
# workers never ask for more threads than there are cores (OpenMP oversubscription makes a run many times slower);
# subprocesses that tests start inherit the same count through the environment
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
THREADS = max(1, min(2, os.cpu_count() or 1) // _WORKERS) if _WORKERS > 1 else min(2, os.cpu_count() or 1)
if _WORKERS > 1:
    os.environ["OMP_NUM_THREADS"] = str(THREADS)
torch.set_num_threads(THREADS)

VOCAB = 97

# tiny random models built from the real architecture configs
TINY_CONFIGS = {
    "gpt2": dict(n_embd=32, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=64, bos_token_id=0, eos_token_id=0),
    "codegen": dict(n_embd=32, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=64, rotary_dim=4, n_ctx=64,
                    bos_token_id=0, eos_token_id=0),
    "gpt_bigcode": dict(n_embd=32, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=64, multi_query=True,
                        bos_token_id=0, eos_token_id=0),
    "llama": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=64, vocab_size=VOCAB),
    "qwen2": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=64, vocab_size=VOCAB),
    "starcoder2": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       intermediate_size=64, vocab_size=VOCAB),
}
ARCHS = list(TINY_CONFIGS)


def tiny_model(arch: str, seed: int = 0, **overrides):
    """A random tiny model with non-zero biases (so bias handling is actually exercised)."""
    from transformers import AutoConfig

    from lord.models import random_model

    return random_model(AutoConfig.for_model(arch, **{**TINY_CONFIGS[arch], **overrides}), seed=seed, bias_std=0.5)


def calib_batches(seed: int = 1, n: int = 4, batch: int = 4, seq: int = 32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (batch, seq), generator=g) for _ in range(n)]


@pytest.fixture
def probe_ids():
    return torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(7))


@pytest.fixture(scope="session")
def smollm2():
    """The real pretrained SmolLM2-135M from the offline zoo (fetched from the registry once)."""
    from lord.models import load_model

    model, tok, info = load_model("smollm2-135m")
    return model, tok, info


def pytest_collection_modifyitems(config, items):
    """``zoo`` on every test that uses the real SmolLM2-135M (the ``smollm2`` fixture, directly or through another
    fixture); ``gpu`` tests skipped when torch sees no CUDA device."""
    no_gpu = pytest.mark.skip(reason="needs CUDA (marker gpu); torch sees no GPU here")
    for item in items:
        if "smollm2" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.zoo)
        if item.get_closest_marker("gpu") and not torch.cuda.is_available():
            item.add_marker(no_gpu)

"""Speed and size (paper §3.3, Figure 3), with the bounds each measured speedup should be read against.

* Forward latency on 512- and 1,024-token sequences: 3 warm-up and 10 timed runs (the paper's protocol);
  mean (as the paper reports), median and standard deviation. CUDA timings synchronise; CPU timings run on a
  fixed number of threads, recorded.
* Greedy decode throughput (tokens/s with the KV cache): what a Copilot user feels.
* Size: parameters, bytes in memory at the run's dtype, bytes on disk of the saved model.

Bounds: decoding one token reads every weight once, so it is memory-bound and its speedup cannot exceed
(dense weight bytes read per token) / (decomposed bytes read per token). A 512/1,024-token forward pass is
compute-bound, so its speedup cannot exceed the ratio of FLOPs. Each speedup is reported as a fraction of
its bound.
"""

from __future__ import annotations

import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn

from lord.modules import LowRankEmbedding


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _unique_tensors(model: nn.Module):
    seen = set()
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            yield t


def size_in_memory(model: nn.Module) -> dict:
    params = sum(p.numel() for p in model.parameters())
    nbytes = sum(t.numel() * t.element_size() for t in _unique_tensors(model))
    return {"n_params": params, "bytes_in_memory": nbytes}


def bytes_on_disk(model: nn.Module, decompositions=()) -> int:
    from lord.checkpoint import WEIGHTS, save_compressed

    with tempfile.TemporaryDirectory() as tmp:
        save_compressed(model, Path(tmp) / "m", list(decompositions))
        return (Path(tmp) / "m" / WEIGHTS).stat().st_size


def _matmul_weights(model: nn.Module) -> int:
    """Weights used in matrix products per token: every linear layer (embedding lookups excluded)."""
    total = 0
    for m in model.modules():
        if isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D":
            total += m.weight.numel()
    return total


def forward_flops(model: nn.Module, seq_len: int) -> float:
    """2 FLOPs per weight per token for the linear layers, plus QK^T and AV (the same for dense and LoRD)."""
    cfg = model.config
    hidden = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd")
    layers = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer")
    return 2.0 * seq_len * _matmul_weights(model) + 4.0 * seq_len * seq_len * hidden * layers


def decode_bytes_per_token(model: nn.Module) -> int:
    """Weight bytes read to decode one token: everything but the embedding table (one row is read)."""
    total = sum(t.numel() * t.element_size() for t in _unique_tensors(model))
    for m in model.modules():
        if isinstance(m, nn.Embedding) and not isinstance(m, LowRankEmbedding):
            total -= m.weight.numel() * m.weight.element_size() - m.weight[0].numel() * m.weight.element_size()
    return total


@torch.inference_mode()
def forward_latency(model: nn.Module, seq_len: int, warmup: int = 3, runs: int = 10, batch: int = 1) -> dict:
    device = next(model.parameters()).device
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (batch, seq_len), generator=torch.Generator().manual_seed(0)).to(device)
    times = []
    for i in range(warmup + runs):
        _sync(device)
        t = time.perf_counter()
        model(input_ids=ids, use_cache=False)
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return {"seq_len": seq_len, "mean_s": statistics.mean(times), "median_s": statistics.median(times),
            "std_s": statistics.stdev(times) if len(times) > 1 else 0.0, "runs": times}


@torch.inference_mode()
def decode_throughput(model: nn.Module, prompt_len: int = 32, new_tokens: int = 64, warmup: int = 1) -> dict:
    device = next(model.parameters()).device
    ids = torch.randint(0, model.config.vocab_size, (1, prompt_len), generator=torch.Generator().manual_seed(1))
    ids = ids.to(device)
    kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, temperature=None, top_p=None,
              top_k=None, pad_token_id=0)
    for _ in range(warmup):
        model.generate(ids, **{**kw, "max_new_tokens": 4, "min_new_tokens": 4})
    _sync(device)
    t = time.perf_counter()
    out = model.generate(ids, **kw)
    _sync(device)
    seconds = time.perf_counter() - t
    generated = out.shape[1] - prompt_len
    return {"new_tokens": generated, "seconds": seconds, "tokens_per_second": generated / seconds}


def peak_memory_bytes(device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # process peak so far (Linux: KiB)


def measure(model: nn.Module, seq_lens=(512, 1024), warmup: int = 3, runs: int = 10, decode_tokens: int = 64,
            decompositions=(), on_disk: bool = True) -> dict:
    """Speed and size of ``model``; ``on_disk=False`` skips saving it to measure its file (slow for a 16B model)."""
    device = next(model.parameters()).device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    out = {"device": str(device), "threads": torch.get_num_threads(), "dtype": str(next(model.parameters()).dtype),
           **size_in_memory(model), "bytes_on_disk": bytes_on_disk(model, decompositions) if on_disk else None,
           "decode_bytes_per_token": decode_bytes_per_token(model),
           "forward": [dict(forward_latency(model, s, warmup, runs), flops=forward_flops(model, s)) for s in seq_lens],
           "decode": decode_throughput(model, new_tokens=decode_tokens)}
    out["peak_memory_bytes"] = peak_memory_bytes(device)
    out["peak_memory_kind"] = "cuda max_memory_allocated" if device.type == "cuda" else "process peak RSS so far"
    return out


def relative(dense: dict, compressed: dict) -> dict:
    """Speedups of ``compressed`` over ``dense`` (measured in the same process) and their bounds."""
    rows = []
    for d, c in zip(dense["forward"], compressed["forward"]):
        speedup = d["mean_s"] / c["mean_s"]
        bound = d["flops"] / c["flops"]
        rows.append({"seq_len": d["seq_len"], "relative_time_mean": c["mean_s"] / d["mean_s"],
                     "relative_time_median": c["median_s"] / d["median_s"], "speedup": speedup,
                     "flops_bound": bound, "fraction_of_bound": speedup / bound})
    dec_speedup = compressed["decode"]["tokens_per_second"] / dense["decode"]["tokens_per_second"]
    dec_bound = dense["decode_bytes_per_token"] / compressed["decode_bytes_per_token"]
    return {"forward": rows,
            "decode": {"speedup": dec_speedup, "bytes_bound": dec_bound,
                       "fraction_of_bound": dec_speedup / dec_bound},
            "relative_size_params": compressed["n_params"] / dense["n_params"],
            "relative_size_disk": (compressed["bytes_on_disk"] / dense["bytes_on_disk"]
                                   if compressed["bytes_on_disk"] and dense["bytes_on_disk"] else None)}

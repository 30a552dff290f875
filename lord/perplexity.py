"""Corpus-level perplexity on fixed-length windows.

``ppl = exp(sum of token NLLs / number of predicted tokens)`` over the whole corpus — never a mean of
per-window perplexities. Each window of ``L`` tokens predicts its last ``L - 1`` tokens.

To bound memory with large vocabularies (Qwen: 151,936), the LM head and the loss run on chunks of
``chunk_tokens`` positions, so at most ``chunk_tokens x vocab`` float32 logits exist at a time,
instead of ``batch x seq x vocab``.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from lord.progress import progress_bar


def _hidden_and_head(model, input_ids):
    """Final hidden states of the backbone and the LM head module (which may itself be decomposed)."""
    backbone = model.base_model
    out = backbone(input_ids=input_ids, use_cache=False)
    return out[0], model.get_output_embeddings()


@torch.inference_mode()
def evaluate_perplexity(model, windows: torch.Tensor, batch_size: int = 4, chunk_tokens: int = 1024,
                        progress: bool = True) -> dict:
    """Perplexity of ``model`` on ``windows`` (``n x L`` token ids)."""
    model.eval()
    device = next(model.parameters()).device
    nll_sum = 0.0
    n_tokens = 0
    t0 = time.perf_counter()
    for batch in progress_bar(windows.split(batch_size), desc="perplexity", unit="batch", disable=not progress):
        ids = batch.to(device)
        hidden, head = _hidden_and_head(model, ids)
        h = hidden[:, :-1].reshape(-1, hidden.shape[-1])
        y = ids[:, 1:].reshape(-1)
        for hs, ys in zip(h.split(chunk_tokens), y.split(chunk_tokens)):
            logits = head(hs).float()
            nll_sum += F.cross_entropy(logits, ys, reduction="sum").item()
        n_tokens += y.numel()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    mean_nll = nll_sum / n_tokens
    return {
        "perplexity": math.exp(mean_nll),
        "nll_sum": nll_sum,
        "mean_nll": mean_nll,
        "n_tokens": n_tokens,
        "n_windows": int(windows.shape[0]),
        "seq_len": int(windows.shape[1]),
        "seconds": seconds,
        "tokens_per_second": windows.numel() / seconds if seconds > 0 else float("nan"),
    }

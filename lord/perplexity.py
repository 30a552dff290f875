"""Corpus-level perplexity on fixed-length windows.

``ppl = exp(sum of token NLLs / number of predicted tokens)`` over the whole corpus — never a mean of
per-window perplexities. Each window of ``L`` tokens predicts its last ``L - 1`` tokens.

To bound memory with large vocabularies (Qwen: 151,936), the LM head and the loss run on chunks of
``chunk_tokens`` positions, so at most ``chunk_tokens x vocab`` float32 logits exist at a time,
instead of ``batch x seq x vocab``.

Besides the corpus total, the NLL is recorded per window and per block of ``block_tokens`` predicted tokens
inside each window (the last block of a window may be shorter): what the analysis needs for intervals
(``analysis.intervals``: a paired bootstrap over windows). The total is summed exactly as before these were
recorded (the chunks' ``reduction="sum"``), so published numbers do not move.
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


BLOCK_TOKENS = 128


def _block_sums(token_nll: torch.Tensor, block_tokens: int) -> list[list[float]]:
    """(windows, predicted tokens) NLLs -> per window, the sums over consecutive blocks of ``block_tokens``."""
    return [[float(b.sum()) for b in row.split(block_tokens)] for row in token_nll.double()]


@torch.inference_mode()
def evaluate_perplexity(model, windows: torch.Tensor, batch_size: int = 4, chunk_tokens: int = 1024,
                        progress: bool = True, block_tokens: int = BLOCK_TOKENS) -> dict:
    """Perplexity of ``model`` on ``windows`` (``n x L`` token ids), with the NLL of each window and of each
    ``block_tokens`` block inside it."""
    model.eval()
    device = next(model.parameters()).device
    nll_sum = 0.0
    n_tokens = 0
    window_nll: list[float] = []
    block_nll: list[list[float]] = []
    t0 = time.perf_counter()
    for batch in progress_bar(windows.split(batch_size), desc="perplexity", unit="batch", disable=not progress):
        ids = batch.to(device)
        hidden, head = _hidden_and_head(model, ids)
        h = hidden[:, :-1].reshape(-1, hidden.shape[-1])
        y = ids[:, 1:].reshape(-1)
        token_nll = []
        for hs, ys in zip(h.split(chunk_tokens), y.split(chunk_tokens)):
            log_probs = F.log_softmax(head(hs).float(), dim=-1)
            nll_sum += F.nll_loss(log_probs, ys, reduction="sum").item()  # = cross_entropy's sum, bit for bit
            token_nll.append(F.nll_loss(log_probs, ys, reduction="none").cpu())
        token_nll = torch.cat(token_nll).view(ids.shape[0], -1)
        window_nll += token_nll.double().sum(1).tolist()
        block_nll += _block_sums(token_nll, block_tokens)
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
        "window_nll": window_nll,
        "block_tokens": block_tokens,
        "block_nll": block_nll,
    }

"""Continuous batching for HumanEval generation: a finished row leaves the batch at once and a waiting one
takes its place, so a batch never runs on behind its slowest row.

Rows live side by side in one KV cache (``DynamicCache``; rows of different lengths are left-padded and masked,
and each row has its own position ids). Every step: the rows still running advance one token; finished rows are
dropped from the cache; new prompts are prefilled (together, left-padded) and their caches joined to the
batch's; leading columns that only padding uses are cut off.

Each row chooses its tokens alone: greedy takes the argmax of its own logits, sampling draws from its own
``torch.Generator`` seeded from (seed, task id, sample index). Which rows share a batch therefore changes a
row's tokens only through float rounding of the batched matmuls (~1e-6 on the logits): greedy equals
unbatched greedy until the first near-tie of the top two logits, and a sampled run that is killed and resumed
writes the samples an uninterrupted run writes.
"""

from __future__ import annotations

import hashlib
import inspect
from collections import deque
from dataclasses import dataclass, field

import torch


@dataclass
class Request:
    key: tuple  # (task_id, sample index)
    prompt_ids: list[int]
    seed: int  # the row's own random stream (sampling)


@dataclass
class Row:
    request: Request
    generator: torch.Generator | None
    out: list[int] = field(default_factory=list)
    margins: list[float] = field(default_factory=list)  # top-1 minus top-2 logit, each step (record_margins)


@dataclass
class Stats:
    steps: int = 0
    generated_tokens: int = 0
    prompt_tokens: int = 0
    prefill_padding: int = 0  # padded prompt positions run through the model in prefills
    cache_slots: int = 0  # sum over steps of batch rows x cache length
    cache_padding: int = 0  # of those, masked (padding) positions
    step_rows: int = 0  # sum over steps of the rows advanced
    max_rows: int = 0

    def describe(self) -> dict:
        return {"steps": self.steps, "generated_tokens": self.generated_tokens, "prompt_tokens": self.prompt_tokens,
                "prefill_padding_fraction": self.prefill_padding / max(1, self.prefill_padding + self.prompt_tokens),
                "cache_padding_fraction": self.cache_padding / max(1, self.cache_slots),
                "mean_rows_per_step": self.step_rows / max(1, self.steps),
                "max_rows": self.max_rows}


def sample_seed(seed: int, task_id: str, sample: int) -> int:
    """A stable 63-bit seed for one sample's random stream."""
    return int(hashlib.sha256(f"{seed}|{task_id}|{sample}".encode()).hexdigest()[:15], 16)


def supports_continuous_batching(model) -> bool:
    """Models whose cache this loop can edit: every layer a plain ``DynamicLayer`` (no sliding window)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    try:
        cache = DynamicCache(config=model.config)
    except Exception:  # a config DynamicCache cannot read: let generate() handle it
        return False
    return all(type(layer) is DynamicLayer for layer in cache.layers)


def _choose(logits: torch.Tensor, rows: list[Row], temperature: float, top_p: float,
            record_margins: bool) -> list[int]:
    logits = logits.float()
    if record_margins:
        top2 = logits.topk(2, dim=-1).values
        for row, (a, b) in zip(rows, top2.tolist()):
            row.margins.append(a - b)
    if temperature <= 0:
        return logits.argmax(-1).tolist()
    chosen = []
    for row, lg in zip(rows, logits):
        probs = torch.softmax(lg / temperature, -1)
        if top_p < 1.0:
            p, idx = probs.sort(descending=True)
            keep = p.cumsum(0) - p < top_p  # the smallest prefix whose mass reaches top_p
            probs = torch.zeros_like(probs).scatter_(0, idx[keep], p[keep])
        chosen.append(int(torch.multinomial(probs, 1, generator=row.generator)))
    return chosen


def _left_pad(t: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    missing = length - t.shape[dim]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)


def _join(cache, mask, new_cache, new_mask):
    """One cache holding the rows of both (left-padded to a common length)."""
    if cache is None:
        return new_cache, new_mask
    length = max(mask.shape[1], new_mask.shape[1])
    for layer, new_layer in zip(cache.layers, new_cache.layers):
        layer.keys = torch.cat([_left_pad(layer.keys, length, -2), _left_pad(new_layer.keys, length, -2)], 0)
        layer.values = torch.cat([_left_pad(layer.values, length, -2), _left_pad(new_layer.values, length, -2)], 0)
    return cache, torch.cat([_left_pad(mask, length, 1), _left_pad(new_mask, length, 1)], 0)


def _keep(cache, mask, keep: list[int]):
    """Only the rows ``keep``, with leading columns that every kept row masks cut off."""
    idx = torch.tensor(keep, dtype=torch.long, device=mask.device)
    mask = mask[idx]
    used = mask.any(0).nonzero()
    start = int(used[0]) if len(used) else mask.shape[1]
    for layer in cache.layers:
        layer.keys = layer.keys[idx][..., start:, :]
        layer.values = layer.values[idx][..., start:, :]
    return cache, mask[:, start:]


@torch.inference_mode()
def generate_continuous(model, requests: list[Request], *, max_rows: int, max_new_tokens: int,
                        is_done, on_finished, temperature: float = 0.0, top_p: float = 1.0, pad_token_id: int = 0,
                        record_margins: bool = False) -> Stats:
    """Run ``requests`` through at most ``max_rows`` rows at a time.

    ``is_done(row)`` says whether a row (its ``out`` token ids so far) has finished; ``on_finished(row)`` is
    called once per row, in the order rows finish. Returns counts for the throughput benchmark."""
    from transformers import DynamicCache

    device = next(model.parameters()).device
    last_only = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    pending = deque(requests)
    rows: list[Row] = []
    cache = mask = None
    last: torch.Tensor | None = None  # (rows,) the token each row feeds next
    stats = Stats()
    while pending or rows:
        if pending and len(rows) < max_rows:  # prefill newcomers together; each chooses its first token
            new = [pending.popleft() for _ in range(min(max_rows - len(rows), len(pending)))]
            width = max(len(r.prompt_ids) for r in new)
            ids = torch.tensor([[pad_token_id] * (width - len(r.prompt_ids)) + r.prompt_ids for r in new],
                               device=device)
            new_mask = torch.tensor([[0] * (width - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in new],
                                    device=device)
            new_cache = DynamicCache(config=model.config)
            logits = model(input_ids=ids, attention_mask=new_mask, position_ids=(new_mask.cumsum(1) - 1).clamp_min(0),
                           past_key_values=new_cache, use_cache=True, **last_only).logits[:, -1]
            stats.prompt_tokens += sum(len(r.prompt_ids) for r in new)
            stats.prefill_padding += sum(width - len(r.prompt_ids) for r in new)
            new_rows = [Row(r, torch.Generator().manual_seed(r.seed) if temperature > 0 else None) for r in new]
            tokens = _choose(logits, new_rows, temperature, top_p, record_margins)
            for row, t in zip(new_rows, tokens):
                row.out.append(t)
            cache, mask = _join(cache, mask, new_cache, new_mask)
            rows += new_rows
            tokens = torch.tensor(tokens, device=device)
            last = tokens if last is None else torch.cat([last, tokens])
            stats.generated_tokens += len(new_rows)
        else:  # one step for every running row
            mask = torch.cat([mask, mask.new_ones(len(rows), 1)], 1)
            stats.steps += 1
            stats.max_rows = max(stats.max_rows, len(rows))
            stats.step_rows += len(rows)
            stats.cache_slots += mask.numel()
            stats.cache_padding += int((mask == 0).sum())
            logits = model(input_ids=last.unsqueeze(1), attention_mask=mask, position_ids=mask.sum(1, keepdim=True) - 1,
                           past_key_values=cache, use_cache=True).logits[:, -1]
            tokens = _choose(logits, rows, temperature, top_p, record_margins)
            for row, t in zip(rows, tokens):
                row.out.append(t)
            last = torch.tensor(tokens, device=device)
            stats.generated_tokens += len(rows)
        finished = {i for i, row in enumerate(rows) if len(row.out) >= max_new_tokens or is_done(row)}
        for i in sorted(finished):
            on_finished(rows[i])
        if finished:
            keep = [i for i in range(len(rows)) if i not in finished]
            rows = [rows[i] for i in keep]
            if rows:
                cache, mask = _keep(cache, mask, keep)
                last = last[torch.tensor(keep, device=device)]
            else:
                cache = mask = last = None
    return stats

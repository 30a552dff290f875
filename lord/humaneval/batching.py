"""Continuous batching for HumanEval generation: a finished row leaves the batch at once and a waiting one
takes its place, so a batch never runs on behind its slowest row.

Rows live side by side in one KV cache (``DynamicCache``; rows of different lengths are left-padded and masked,
and each row has its own position ids). Every step: the rows still running advance one token; finished rows are
dropped from the cache; new prompts are prefilled (together, left-padded) and their caches joined to the
batch's; leading columns that only padding uses are cut off.

Prefix sharing (``share_prefix``, sampling: n samples of one task have one prompt): a prompt is prefilled once and
its cache row is copied to each of its samples as they join; every sample then chooses its first token from those
shared logits with its own generator. When the batch has fewer free rows than a task has samples, the prefill is
kept (one row, its prompt's length) until the task's last sample has joined, rather than run again: with the queue
sorted by task, at most a task or two are kept at a time (``Stats``: ``reprefills_avoided``,
``kept_prefill_peak_mib``).

Each row chooses its tokens alone: greedy takes the argmax of its own logits, sampling draws from its own
``torch.Generator`` seeded from (seed, task id, sample index). Which rows share a batch therefore changes a
row's tokens only through float rounding of the batched matmuls (~1e-6 on the logits): greedy equals
unbatched greedy until the first near-tie of the top two logits, and a sampled run that is killed and resumed
writes the samples an uninterrupted run writes. Sharing a prefill changes a sample's tokens in the same way only:
the shared prompt ran in another prefill batch (other padding), so its logits differ by rounding alone.
"""

from __future__ import annotations

import hashlib
import inspect
from collections import Counter, deque
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
    prefills: int = 0  # prompts run through a prefill (one per row without sharing)
    shared_rows: int = 0  # rows that joined on another row's prefill (prefix sharing)
    reprefills_avoided: int = 0  # admissions served by a prefill kept from an earlier admission
    reprefill_tokens_avoided: int = 0  # the prompt tokens those prefills again would have run
    kept_prefill_peak_bytes: int = 0  # the most memory kept prefills held at once

    def describe(self) -> dict:
        return {"steps": self.steps, "generated_tokens": self.generated_tokens, "prompt_tokens": self.prompt_tokens,
                "prefills": self.prefills, "shared_rows": self.shared_rows,
                "reprefills_avoided": self.reprefills_avoided,
                "reprefill_tokens_avoided": self.reprefill_tokens_avoided,
                "kept_prefill_peak_mib": self.kept_prefill_peak_bytes / 2**20,
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


# the nucleus (top-p) is looked for among a row's most probable tokens first; the full sort runs only for a row
# whose NUCLEUS_CANDIDATES most probable tokens hold less than top_p of its probability (SmolLM2-135M on HumanEval
# prompts at T = 0.2, top-p 0.95: 1 to 5 tokens in each of 240 steps). Sorting a 150k vocabulary costs ~4 ms a row
# and drawing from all of it ~6 ms (one thread): ~0.6 s a step at 64 rows, for the sampling alone.
NUCLEUS_CANDIDATES = 64


def _choose(logits: torch.Tensor, rows: list[Row], temperature: float, top_p: float,
            record_margins: bool) -> list[int]:
    """Each row's next token: the argmax (greedy) or a draw with the row's own generator from its nucleus.

    Softmax and top-k run on all rows at once: both are row-wise kernels, so a row gets the values it would get
    alone (``tests/test_batching.py`` checks it), and rows are not looped over for the full vocabulary."""
    logits = logits if logits.dtype == torch.float64 else logits.float()
    if record_margins:
        top2 = logits.topk(2, dim=-1).values
        for row, (a, b) in zip(rows, top2.tolist()):
            row.margins.append(a - b)
    if temperature <= 0:
        return logits.argmax(-1).tolist()
    probs = torch.softmax(logits / temperature, -1)
    if top_p >= 1.0:
        return [int(torch.multinomial(p, 1, generator=row.generator)) for row, p in zip(rows, probs)]
    candidates = probs.topk(min(NUCLEUS_CANDIDATES, probs.shape[-1]), dim=-1)
    chosen = []
    for i, row in enumerate(rows):
        p, idx = candidates.values[i], candidates.indices[i]
        mass = p.cumsum(0)
        if mass[-1] < top_p and len(p) < probs.shape[-1]:  # the nucleus reaches past the candidates
            p, idx = probs[i].sort(descending=True)
            mass = p.cumsum(0)
        keep = mass - p < top_p  # the smallest prefix whose mass reaches top_p, most probable first
        chosen.append(int(idx[keep][torch.multinomial(p[keep], 1, generator=row.generator)]))
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


@dataclass
class _Prefill:
    """One prompt's prefill, kept until each of its samples has joined the batch (prefix sharing)."""
    layers: list[tuple[torch.Tensor, torch.Tensor]]  # per layer (keys, values): (1, heads, prompt length, dim)
    logits: torch.Tensor  # (vocab,) after the prompt's last token
    admission: int  # the admission that prefilled it

    def nbytes(self) -> int:
        return sum(k.nbytes + v.nbytes for k, v in self.layers) + self.logits.nbytes


def _prefill(model, prompts: list[list[int]], pad_token_id: int, stats: Stats, last_only: dict):
    """The prompts run together (left-padded): (their cache, mask, logits after each prompt's last token)."""
    from transformers import DynamicCache

    device = next(model.parameters()).device
    width = max(len(ids) for ids in prompts)
    ids = torch.tensor([[pad_token_id] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    cache = DynamicCache(config=model.config)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp_min(0),
                   past_key_values=cache, use_cache=True, **last_only).logits[:, -1]
    stats.prefills += len(prompts)
    stats.prompt_tokens += sum(len(p) for p in prompts)
    stats.prefill_padding += sum(width - len(p) for p in prompts)
    return cache, mask, logits


def _admit_shared(model, new: list[Request], kept: dict, waiting: Counter, admission: int, pad_token_id: int,
                  stats: Stats, last_only: dict):
    """Cache, mask and first-token logits of the rows ``new``: each prompt not kept yet is prefilled once (one
    batch), and every row gets a copy of its prompt's row; a prompt is kept while samples of it still wait
    (``waiting``: per prompt, its requests not admitted yet)."""
    from transformers import DynamicCache

    prompts = [tuple(r.prompt_ids) for r in new]
    fresh = [p for p in dict.fromkeys(prompts) if p not in kept]
    if fresh:
        cache, mask, logits = _prefill(model, [list(p) for p in fresh], pad_token_id, stats, last_only)
        for j, p in enumerate(fresh):
            start = mask.shape[1] - len(p)  # the row without its left padding
            kept[p] = _Prefill([(layer.keys[j:j + 1, ..., start:, :].clone(),
                                 layer.values[j:j + 1, ..., start:, :].clone()) for layer in cache.layers],
                               logits[j].clone(), admission)
    for p in dict.fromkeys(prompts):
        if kept[p].admission < admission:  # kept from an earlier admission: no prefill again
            stats.reprefills_avoided += 1
            stats.reprefill_tokens_avoided += len(p)
    stats.shared_rows += len(prompts) - len(fresh)
    stats.kept_prefill_peak_bytes = max(stats.kept_prefill_peak_bytes, sum(k.nbytes() for k in kept.values()))
    width = max(len(p) for p in prompts)
    device = kept[prompts[0]].logits.device
    rows_cache = DynamicCache(config=model.config)
    for i, layer in enumerate(rows_cache.layers):
        keys = torch.cat([_left_pad(kept[p].layers[i][0], width, -2) for p in prompts], 0)
        values = torch.cat([_left_pad(kept[p].layers[i][1], width, -2) for p in prompts], 0)
        layer.lazy_initialization(keys, values)
        layer.keys, layer.values = keys, values
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    logits = torch.stack([kept[p].logits for p in prompts])
    for p in prompts:
        waiting[p] -= 1
        if waiting[p] == 0:
            del kept[p]
    return rows_cache, mask, logits


@torch.inference_mode()
def generate_continuous(model, requests: list[Request], *, max_rows: int, max_new_tokens: int,
                        is_done, on_finished, temperature: float = 0.0, top_p: float = 1.0, pad_token_id: int = 0,
                        record_margins: bool = False, share_prefix: bool = False) -> Stats:
    """Run ``requests`` through at most ``max_rows`` rows at a time.

    ``is_done(row)`` says whether a row (its ``out`` token ids so far) has finished; ``on_finished(row)`` is
    called once per row, in the order rows finish. ``share_prefix``: requests with the same prompt share one
    prefill. Returns counts for the throughput benchmark."""
    device = next(model.parameters()).device
    last_only = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    pending = deque(requests)
    waiting = Counter(tuple(r.prompt_ids) for r in requests) if share_prefix else None
    kept: dict[tuple, _Prefill] = {}
    admissions = 0
    rows: list[Row] = []
    cache = mask = None
    last: torch.Tensor | None = None  # (rows,) the token each row feeds next
    stats = Stats()
    while pending or rows:
        if pending and len(rows) < max_rows:  # newcomers join; each chooses its first token
            new = [pending.popleft() for _ in range(min(max_rows - len(rows), len(pending)))]
            admissions += 1
            if share_prefix:
                new_cache, new_mask, logits = _admit_shared(model, new, kept, waiting, admissions, pad_token_id,
                                                            stats, last_only)
            else:
                new_cache, new_mask, logits = _prefill(model, [r.prompt_ids for r in new], pad_token_id, stats,
                                                       last_only)
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

"""The batch width of HumanEval generation, chosen from the decode cost measured on this machine.

A decode step of ``w`` rows costs ``t(w)`` ms; it yields ``w`` tokens, so the batch makes ``1000 w / t(w)``
tokens/s while it is full. On a CPU ``t`` grows slowly at first (the weights are read once per step whatever the
width) and then about linearly (the work per row dominates): tokens/s rises and then flattens. The width chosen
is the narrowest measured one whose tokens/s is within ``tolerance`` of the best measured: wider batches buy
less than that and cost memory, cache padding (rows of different lengths share one cache) and a longer tail
(the last rows of a run decode in a batch that is no longer full). No width above the number of samples to
generate is measured or chosen: the batch could not fill it.

    curve = measure_decode_curve(model, widths_for(queue=1640))   # {1: 149.0, 2: 160.3, ..., 96: 1890.0}
    width = choose_width(curve)
"""

from __future__ import annotations

import copy
import time

import torch

from lord.errors import LordError

WIDTHS = (1, 2, 4, 8, 16, 32, 48, 64, 96)
TOLERANCE = 0.05  # a wider batch must buy more than 5 % tokens/s to be worth its memory, padding and tail
CONTEXT = 300  # cache length of the measurement: a HumanEval prompt and a typical completion


def widths_for(queue: int, widths=WIDTHS) -> list[int]:
    """The widths worth measuring for ``queue`` samples: those below it, and the queue itself if it is shorter
    than the widest."""
    if queue <= 0:
        raise LordError(f"no samples to generate (queue={queue}); nothing to choose a batch width for")
    below = [w for w in widths if w < queue]
    return below + [queue] if queue <= max(widths) else list(widths)


@torch.inference_mode()
def measure_decode_curve(model, widths, context: int = CONTEXT, steps: int = 5) -> dict[int, float]:
    """{width: median ms of one decode step of that many rows over a ``context``-token cache}.

    One row of random tokens is prefilled once and its cache copied to each width (a step's cost does not
    depend on the values in the cache), so measuring 96 rows does not prefill 96 prompts. The first step of each
    width is not timed (it allocates the grown cache)."""
    from transformers import DynamicCache

    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(0)
    vocab = model.get_input_embeddings().weight.shape[0]
    base = DynamicCache(config=model.config)
    model(input_ids=torch.randint(0, vocab, (1, context), generator=g).to(device), past_key_values=base,
          use_cache=True)
    curve = {}
    for rows in widths:
        cache = copy.deepcopy(base)
        cache.batch_repeat_interleave(rows)
        last = torch.zeros(rows, 1, dtype=torch.long, device=device)
        mask = torch.ones(rows, context + 1, dtype=torch.long, device=device)
        times = []
        for _ in range(steps + 1):
            start = time.perf_counter()
            model(input_ids=last, attention_mask=mask, position_ids=mask.sum(1, keepdim=True) - 1,
                  past_key_values=cache, use_cache=True)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
            mask = torch.cat([mask, mask.new_ones(rows, 1)], 1)
        times = sorted(times[1:])
        curve[rows] = 1000 * times[len(times) // 2]
    return curve


def tokens_per_s(curve: dict[int, float]) -> dict[int, float]:
    return {w: 1000 * w / ms for w, ms in curve.items()}


def choose_width(curve: dict[int, float], tolerance: float = TOLERANCE) -> int:
    """The narrowest width whose tokens/s is within ``tolerance`` (a fraction) of the best in ``curve``."""
    if not curve or any(not (ms > 0) for ms in curve.values()):
        raise LordError(f"a decode curve needs positive step times, got {curve}")
    if not 0 <= tolerance < 1:
        raise LordError(f"tolerance={tolerance} must be a fraction in [0, 1)")
    rate = tokens_per_s(curve)
    best = max(rate.values())
    return min(w for w, r in rate.items() if r >= (1 - tolerance) * best)


def automatic_width(model, queue: int, widths=WIDTHS, tolerance: float = TOLERANCE,
                    context: int = CONTEXT) -> dict:
    """Measure the decode curve up to ``queue`` rows and choose the width: what a result records of it."""
    start = time.perf_counter()
    curve = measure_decode_curve(model, widths_for(queue, widths), context)
    return {"batch_size": choose_width(curve, tolerance), "decode_step_ms_by_rows": curve,
            "decode_tokens_per_s_by_rows": tokens_per_s(curve), "tolerance": tolerance, "context": context,
            "queue": queue, "threads": torch.get_num_threads(), "measure_s": time.perf_counter() - start}

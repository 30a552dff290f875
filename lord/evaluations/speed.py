"""``speed``: forward latency, greedy decode tokens/s and size; the dense model is the baseline, measured in
the same process right before compression (timings from another process or machine are not comparable)."""

from __future__ import annotations

from lord import speed
from lord.evaluations.base import EVALUATIONS, Evaluation


@EVALUATIONS.register("speed")
class Speed(Evaluation):
    def _run(self, ctx) -> dict:
        o = self.options
        return speed.measure(ctx.model, o.seq_lens, o.warmup, o.runs, o.decode_tokens,
                             decompositions=ctx.decompositions)

    def baseline(self, ctx) -> dict:
        return self._run(ctx)

    def measure(self, ctx, baseline) -> dict:
        comp = self._run(ctx)
        return {"dense": baseline, "compressed": comp, "relative": speed.relative(baseline, comp)}

    def headline(self, m: dict) -> str:
        rel = m["relative"]
        return (", ".join(f"{r['seq_len']} tokens x{r['speedup']:.3f}" for r in rel["forward"])
                + f", decode x{rel['decode']['speedup']:.3f}")

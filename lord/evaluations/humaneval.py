"""``humaneval``: pass@k of generated completions (presets in ``lord.humaneval.generate``); samples and
outcomes are written next to the result, so an interrupted evaluation resumes."""

from __future__ import annotations

from lord.evaluations.base import EVALUATIONS, Evaluation
from lord.humaneval.evaluate import evaluate_humaneval
from lord.humaneval.sandbox import Limits


@EVALUATIONS.register("humaneval")
class HumanEval(Evaluation):
    @property
    def tag(self) -> str:
        return f"humaneval-{self.options.preset}"

    def measure(self, ctx, baseline) -> dict:
        e = self.options
        he = evaluate_humaneval(ctx.model, ctx.tokenizer, ctx.artifacts, preset=e.preset, limit=e.limit,
                                task_ids=None if e.task_ids is None else list(e.task_ids), seeds=list(e.seeds),
                                batch_size=e.batch_size, chat_template=e.chat_template,
                                max_new_tokens=e.max_new_tokens, n=e.n, limits=Limits(timeout_s=e.timeout_s),
                                workers=e.workers)
        return {k: v for k, v in he.items() if k != "per_seed"} | {
            "per_seed": [{k: v for k, v in s.items() if k != "per_task"} for s in he["per_seed"]],
            "per_task": he["per_seed"][0]["per_task"]}

    def headline(self, m: dict) -> str:
        return ", ".join(f"{k} {v['mean']:.2f}" for k, v in m.items() if k.startswith("pass@"))

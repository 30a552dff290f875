"""``humaneval``: pass@k of generated completions (presets in ``lord.humaneval.generate``); samples and
outcomes are written next to the result, so an interrupted evaluation resumes."""

from __future__ import annotations

from lord.errors import LordError, positive_int
from lord.evaluations.base import EVALUATIONS, Evaluation
from lord.humaneval.evaluate import evaluate_humaneval
from lord.humaneval.isolation import choose as choose_isolation
from lord.humaneval.sandbox import Limits
from lord.humaneval.seed_reuse import reuse_seeds


@EVALUATIONS.register("humaneval")
class HumanEval(Evaluation):
    @property
    def tag(self) -> str:
        return f"humaneval-{self.options.preset}"

    def check_config(self) -> None:
        from lord.humaneval.evaluate import load_problems
        from lord.humaneval.generate import get_preset

        e = self.options
        get_preset(e.preset)
        positive_int("eval.limit", e.limit, allow_none=True)
        width = e.batch_size
        if width != "auto" and (isinstance(width, bool) or not isinstance(width, int) or width <= 0):
            raise LordError(f"eval.batch_size={width!r} must be a positive integer (rows generated at once) or auto "
                            "(chosen from the decode cost measured on this machine)")
        if not isinstance(e.get("share_prefix", True), bool):
            raise LordError(f"eval.share_prefix={e.share_prefix!r} must be true or false (the samples of a task "
                            "share one prefill of its prompt)")
        positive_int("eval.max_new_tokens", e.max_new_tokens)
        positive_int("eval.n", e.n, allow_none=True)
        choose_isolation()  # a bad LORD_SANDBOX, or namespaces asked for where they cannot run: before the model
        if e.task_ids is not None:
            try:
                load_problems(task_ids=list(e.task_ids))
            except LordError as err:
                raise LordError(f"eval.task_ids: {err}") from None

    def measure(self, ctx, baseline) -> dict:
        e = self.options
        reused = reuse_seeds(ctx.artifacts, ctx.identity, list(e.seeds))
        he = evaluate_humaneval(ctx.model, ctx.tokenizer, ctx.artifacts, preset=e.preset, limit=e.limit,
                                task_ids=None if e.task_ids is None else list(e.task_ids), seeds=list(e.seeds),
                                batch_size=e.batch_size, chat_template=e.chat_template,
                                max_new_tokens=e.max_new_tokens, n=e.n, limits=Limits(timeout_s=e.timeout_s),
                                workers=e.workers, share_prefix=e.get("share_prefix", True))
        return {k: v for k, v in he.items() if k != "per_seed"} | {
            "per_seed": [{k: v for k, v in s.items() if k != "per_task"} for s in he["per_seed"]],
            "per_task": he["per_seed"][0]["per_task"]} | ({"seeds_reused": reused} if reused else {})

    def headline(self, m: dict) -> str:
        return ", ".join(f"{k} {v['mean']:.2f}" for k, v in m.items() if k.startswith("pass@"))

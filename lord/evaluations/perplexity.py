"""``perplexity``: corpus-level perplexity on the validation windows; the dense value is the baseline,
cached on disk per (model, validation windows, batch size).

A result holds the NLL of every validation window and block (``lord.perplexity``) for the compressed model and,
as ``dense_window_nll`` / ``dense_block_nll``, for the dense one on the same tokens: everything a paired
interval on the perplexity increase needs (``analysis.intervals``)."""

from __future__ import annotations

from lord.cache import content_key, tensor_hash
from lord.errors import positive_int
from lord.evaluations.base import EVALUATIONS, Evaluation
from lord.atomic import read_json, write_json_atomic
from lord.perplexity import evaluate_perplexity


@EVALUATIONS.register("perplexity")
class Perplexity(Evaluation):
    needs_validation_windows = True

    @property
    def tag(self) -> str:
        return ""

    def check_config(self) -> None:
        positive_int("eval.n_windows", self.options.n_windows, allow_none=True)
        positive_int("eval.batch_size", self.options.batch_size)
        positive_int("eval.chunk_tokens", self.options.chunk_tokens)

    def _run(self, ctx) -> dict:
        o = self.options
        return evaluate_perplexity(ctx.model, ctx.data.windows("validation"), o.batch_size, o.chunk_tokens)

    def baseline(self, ctx) -> dict:
        val = ctx.data.windows("validation")
        key = content_key(ctx.cache.model_key, tensor_hash(val), self.options.batch_size)
        f = ctx.cache.root / "dense" / f"{key}.json"
        dense = read_json(f)
        if dense is None or "window_nll" not in dense:  # cached before per-window NLL was recorded
            dense = self._run(ctx)
            write_json_atomic(f, dense)
        return dense

    def measure(self, ctx, baseline) -> dict:
        m = dict(self._run(ctx) if ctx.changed else baseline)
        m["dense_perplexity"] = baseline["perplexity"]
        m["dense_window_nll"] = baseline["window_nll"]
        m["dense_block_nll"] = baseline["block_nll"]
        m["perplexity_increase_percent"] = 100 * (m["perplexity"] / baseline["perplexity"] - 1)
        return m

    def headline(self, m: dict) -> str:
        return (f"perplexity {m['perplexity']:.4f} (dense {m['dense_perplexity']:.4f}, "
                f"{m['perplexity_increase_percent']:+.2f}%)")

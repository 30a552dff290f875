"""Batched HumanEval completion: many prompts per forward pass, each stopped by its preset's rule.

Prompts are sorted by length (less padding) and expanded ``n`` times for sampling, then generated with
continuous batching (``lord.humaneval.batching``: a finished row leaves at once and the next prompt takes its
place; each sample's random stream is its own, from (seed, task id, sample index)); the n samples of a task share
one prefill of its prompt (``share_prefix``). Samples are appended to a JSONL file as each one finishes, so an
interrupted run resumes where it stopped, at sample granularity, and writes what an uninterrupted run writes.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from lord.errors import LordError
from lord.humaneval.batching import Request, generate_continuous, sample_seed, supports_continuous_batching
from lord.progress import progress_bar

log = logging.getLogger(__name__)

TOP_LEVEL = re.compile(r"\n(?=[^\s])")
BIGCODE_STOPS = ("\ndef ", "\nclass ", "\nif ", "\nprint(", "\n#", "\n@", "\nassert ", '\n"""', "\n```")


@dataclass(frozen=True)
class Preset:
    name: str
    n: int
    temperature: float
    top_p: float
    max_new_tokens: int
    stop: str  # "blank_line" (code-eval), "sequences" (bigcode stop list) or "top_level" (first unindented line)
    stop_sequences: tuple[str, ...] = field(default=BIGCODE_STOPS)
    ks: tuple[int, ...] = (1, 10)


PRESETS = {
    # the harness the paper cites (abacaj/code-eval): 10 samples, T=0.2, top-p 0.95, cut at the first blank line
    "code_eval": Preset("code_eval", n=10, temperature=0.2, top_p=0.95, max_new_tokens=512, stop="blank_line"),
    # bigcode-evaluation-harness: same sampling, stop at the next top-level statement
    "bigcode": Preset("bigcode", n=10, temperature=0.2, top_p=0.95, max_new_tokens=512, stop="sequences"),
    # the cheap CPU setting: one greedy sample, stopped at the first unindented line (the function body is
    # over: this also ends prose that an Instruct model writes after the code, which no bigcode stop matches)
    "greedy": Preset("greedy", n=1, temperature=0.0, top_p=1.0, max_new_tokens=512, stop="top_level", ks=(1,)),
}


def get_preset(name: str, **overrides) -> Preset:
    if name not in PRESETS:
        raise LordError(f"unknown HumanEval preset {name!r}; choose from: {', '.join(PRESETS)}")
    p = PRESETS[name]
    return Preset(**{**p.__dict__, **{k: v for k, v in overrides.items() if v is not None}})


def truncate(text: str, preset: Preset) -> str:
    """The completion the preset keeps from raw generated text."""
    text = text.replace("\t", "    ")
    if preset.stop == "blank_line":
        return text.lstrip("\n").split("\n\n")[0]
    if preset.stop == "top_level":
        m = TOP_LEVEL.search(text)
        return text[:m.start()].rstrip("\n") + "\n" if m else text
    cut = min((i for i in (text.find(s) for s in preset.stop_sequences) if i >= 0), default=len(text))
    return text[:cut]


def _done(text: str, preset: Preset) -> bool:
    if preset.stop == "blank_line":
        return "\n\n" in text.lstrip("\n")
    if preset.stop == "top_level":
        return TOP_LEVEL.search(text) is not None
    return any(s in text for s in preset.stop_sequences)


class _StopRule(StoppingCriteria):
    def __init__(self, tokenizer, prompt_len: int, preset: Preset):
        self.tok, self.prompt_len, self.preset = tokenizer, prompt_len, preset

    def __call__(self, input_ids, scores, **kwargs):
        texts = self.tok.batch_decode(input_ids[:, self.prompt_len:], skip_special_tokens=True)
        return torch.tensor([_done(t, self.preset) for t in texts], device=input_ids.device)


def chat_prompt(tokenizer, prompt: str) -> str:
    msg = ("Complete the following Python function. Reply with the whole function in one ```python block.\n\n"
           f"```python\n{prompt}```")
    return tokenizer.apply_chat_template([{"role": "user", "content": msg}], add_generation_prompt=True,
                                         tokenize=False)


def completion_from_chat(reply: str, problem: dict) -> str:
    """Code from a chat reply, as a completion of the raw prompt (a redefinition of the function is fine)."""
    m = re.search(r"```(?:python)?\n(.*?)(```|$)", reply, flags=re.S)
    code = (m.group(1) if m else reply).replace("\t", "    ")
    if re.search(rf"def\s+{re.escape(problem['entry_point'])}\s*\(", code):
        return "\n" + code
    return code


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut by an interrupted write: everything after it is regenerated
    return out


def _prompts(tokenizer, problems: dict, chat_template: bool) -> dict[str, str]:
    return {tid: chat_prompt(tokenizer, p["prompt"]) if chat_template else p["prompt"] for tid, p in problems.items()}


def _eos_ids(model, tokenizer) -> set[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    ids = set(eos if isinstance(eos, (list, tuple)) else [eos]) | {tokenizer.eos_token_id}
    return {i for i in ids if i is not None}


@torch.inference_mode()
def generate_samples(model, tokenizer, problems: dict, preset: Preset, samples_file: Path, seed: int = 0,
                     batch_size: int = 8, chat_template: bool = False, progress: bool = True,
                     stats: dict | None = None, batching: str = "auto", share_prefix: bool = True) -> list[dict]:
    """Write ``preset.n`` completions per problem to ``samples_file`` (resuming it) and return all samples.

    Continuous batching (``lord.humaneval.batching``) in rows of at most ``batch_size`` where the model's cache
    allows it, the samples of a task sharing one prefill (``share_prefix``, when ``preset.n`` > 1); else batches
    that run until their last row stops (``batching="static"`` forces those). ``stats`` (a dict) receives the
    batching counts."""
    samples_file.parent.mkdir(parents=True, exist_ok=True)
    kept = read_jsonl(samples_file)
    done = {(s["task_id"], s["sample"]) for s in kept}
    samples_file.write_text("".join(json.dumps(s) + "\n" for s in kept))  # without a cut last line
    todo = [(tid, i) for tid in problems for i in range(preset.n) if (tid, i) not in done]
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    texts = _prompts(tokenizer, problems, chat_template)
    prompt_ids = {tid: tokenizer(texts[tid], add_special_tokens=not chat_template).input_ids for tid in problems}
    todo.sort(key=lambda x: (-len(prompt_ids[x[0]]), x[0], x[1]))
    bar = progress_bar(total=len(todo), desc=f"humaneval {preset.name}", unit="sample", disable=not progress)
    with open(samples_file, "a") as out:
        def write(tid, i, raw, stop=None):
            completion = completion_from_chat(raw, problems[tid]) if chat_template else truncate(raw, preset)
            sample = {"task_id": tid, "sample": i, "seed": seed, "completion": completion, "raw": raw}
            out.write(json.dumps(sample | ({"stop": stop} if stop else {})) + "\n")
            out.flush()
            bar.update(1)

        continuous = batching == "auto" and supports_continuous_batching(model)
        if batching == "auto" and not continuous and todo:
            log.info("continuous batching%s off: the cache of %s cannot be edited row by row (a sliding window, as "
                     "in Starcoder2); generating in static batches of %d", " and prefix sharing are" if preset.n > 1
                     else " is", type(model).__name__, batch_size)
        if continuous:
            eos = _eos_ids(model, tokenizer)

            def stop_reason(row) -> str | None:
                """Why a row ended: the end-of-text token, the preset's stop rule, or (None) not yet."""
                if row.out[-1] in eos:
                    return "eos"
                if not chat_template and _done(tokenizer.decode(row.out, skip_special_tokens=True), preset):
                    return "rule"
                return None

            def finished(row) -> None:  # rows that end without a reason ran to max_new_tokens
                write(*row.request.key, tokenizer.decode(row.out, skip_special_tokens=True),
                      stop_reason(row) or "cap")

            counts = generate_continuous(
                model, [Request((tid, i), prompt_ids[tid], sample_seed(seed, tid, i)) for tid, i in todo],
                max_rows=batch_size, max_new_tokens=preset.max_new_tokens,
                is_done=lambda row: stop_reason(row) is not None, on_finished=finished,
                temperature=preset.temperature, top_p=preset.top_p, pad_token_id=tokenizer.pad_token_id,
                share_prefix=share_prefix and preset.n > 1)
            if stats is not None:
                stats.update(mode="continuous", batch_size=batch_size, share_prefix=share_prefix and preset.n > 1,
                             **counts.describe())
        else:
            _generate_static(model, tokenizer, texts, todo, preset, seed, batch_size, chat_template, write)
            if stats is not None:
                stats.update(mode="static", batch_size=batch_size, share_prefix=False)
    bar.close()
    return read_jsonl(samples_file)


def _generate_static(model, tokenizer, texts, todo, preset, seed, batch_size, chat_template, write) -> None:
    """Batches that run until their last row stops (models whose cache continuous batching cannot edit)."""
    device = next(model.parameters()).device
    sampling = preset.temperature > 0
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        enc = tokenizer([texts[tid] for tid, _ in chunk], return_tensors="pt", padding=True,
                        add_special_tokens=not chat_template).to(device)
        torch.manual_seed(seed * 1_000_003 + start)
        width = enc.input_ids.shape[1]
        kwargs = dict(do_sample=True, temperature=preset.temperature, top_p=preset.top_p) if sampling else \
            dict(do_sample=False, temperature=None, top_p=None, top_k=None)
        gen = model.generate(**enc, max_new_tokens=preset.max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                             stopping_criteria=None if chat_template else
                             StoppingCriteriaList([_StopRule(tokenizer, width, preset)]), **kwargs)
        for (tid, i), raw in zip(chunk, tokenizer.batch_decode(gen[:, width:], skip_special_tokens=True)):
            write(tid, i, raw)

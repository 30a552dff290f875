"""LoRA fine-tuning (peft) of a dense or LoRD model, merged back into its weights afterwards.

Data (``LoraSettings.data``), always from the run's *calibration* corpus, which shares no file with the
validation split (``lord.corpora``) and holds no HumanEval problem:

* ``instructions`` — an offline code-instruction set: for every function with a docstring, the prompt is its
  signature and docstring and the target its body (HumanEval's format); the loss is on the body only. This is
  the paper's A.5 setting (LoRA on a code-instruction set after LoRD).
* ``corpus`` — language modelling on the corpus cut into ``seq_len``-token windows: *healing*, training LoRA
  to recover what compression lost (SVD-LLM's "parameter update").

The adapters go on every ``nn.Linear`` in the blocks: a dense model's projections, and a LoRD layer's factors
``A`` and ``B`` (and the layers a decomposition left dense). After training each adapter is merged,
``W += (alpha / r) * lora_B @ lora_A``: on a factor ``A`` (rank x d_in) the sum has the same shape, so a LoRD
model stays a LoRD model with the same ranks and parameter count, and saves as a LoRD checkpoint. A group's
members call whatever module sits at the shared ``A``'s attribute of their parent (``modeling_lord``), so while
the adapters are attached they call the adapted ``A``, and the merged one after.
"""

from __future__ import annotations

import ast
import hashlib
import math
import random
import time
from dataclasses import asdict, dataclass, fields
from typing import Iterator

import torch
import torch.nn as nn

from lord.architectures import architecture_for, block_linears
from lord.errors import LordError
from lord.memory import PeakMemory
from lord.progress import progress_bar

DATA_SOURCES = ("instructions", "corpus")


@dataclass(frozen=True)
class LoraSettings:
    data: str = "instructions"   # instructions | corpus (module docstring)
    steps: int = 100             # optimizer steps
    batch_size: int = 4          # sequences per step
    seq_len: int = 256           # tokens per sequence (an instruction example is cut to it)
    r: int = 8                   # LoRA rank
    alpha: float = 16.0          # LoRA scale alpha / r
    dropout: float = 0.0         # dropout on the adapters' input
    lr: float = 2e-4             # AdamW peak learning rate: linear warm-up over warmup steps, then linear decay
    warmup: int = 10
    max_grad_norm: float = 1.0

    @classmethod
    def from_config(cls, section) -> "LoraSettings":
        """From the ``lora`` config group (a mapping; missing keys keep their defaults), checked."""
        section = dict(section or {})
        allowed = [f.name for f in fields(cls)]
        unknown = sorted(set(section) - set(allowed))
        if unknown:
            raise LordError(f"lora has unknown key(s) {unknown}; allowed: {', '.join(allowed)}")
        s = cls(**section)
        s.check()
        return s

    def check(self) -> None:
        if self.data not in DATA_SOURCES:
            raise LordError(f"lora.data={self.data!r} is unknown; allowed: {', '.join(DATA_SOURCES)}")
        for key, low in (("steps", 1), ("batch_size", 1), ("seq_len", 8), ("r", 1), ("warmup", 0)):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise LordError(f"lora.{key}={v!r} must be an integer >= {low}")
        for key in ("alpha", "lr", "max_grad_norm"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise LordError(f"lora.{key}={v!r} must be a number > 0")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise LordError(f"lora.dropout={self.dropout!r} must be a number in [0, 1)")


# ------------------------------------------------------------------------------------------------ data

@dataclass(frozen=True)
class Instruction:
    path: str
    name: str
    prompt: str  # signature (decorators left out) and docstring, dedented, ending in a newline
    target: str  # the rest of the function's body, ending in a newline


def _dedent(lines: list[str], col: int) -> list[str]:
    """Strip the function's own indentation; a line with less (inside a multi-line string) stays as it is."""
    return [ln[col:] if ln[:col].isspace() or not ln[:col] else ln for ln in lines]


def instructions_from_source(source: str, path: str, max_body_lines: int = 40) -> list[Instruction]:
    """Every function of ``source`` with a docstring and 1..``max_body_lines`` non-blank lines after it, split
    into prompt (``def`` line through the docstring) and target (the body after the docstring)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    lines = source.splitlines()
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or ast.get_docstring(node) is None:
            continue
        if len(node.body) < 2 or node.body[1].lineno <= node.body[0].end_lineno:
            continue  # nothing after the docstring, or code on the docstring's last line
        doc_end = node.body[0].end_lineno
        body = lines[doc_end:node.end_lineno]
        if not 1 <= sum(1 for ln in body if ln.strip()) <= max_body_lines:
            continue
        text = _dedent(lines[node.lineno - 1:node.end_lineno], node.col_offset)
        n_prompt = doc_end - node.lineno + 1
        out.append(Instruction(path, node.name, "\n".join(text[:n_prompt]) + "\n", "\n".join(text[n_prompt:]) + "\n"))
    return out


def instruction_set(records: list[dict], seed: int = 0) -> list[Instruction]:
    """The instructions of every record (``content``, ``path``), in a fixed pseudo-random order (``seed``)."""
    found = [ins for r in records for ins in instructions_from_source(r["content"], r["path"])]
    found.sort(key=lambda i: hashlib.sha256(f"{i.path}\0{i.name}\0{i.prompt}".encode()).hexdigest())
    random.Random(seed).shuffle(found)
    return found


def instruction_examples(instructions: list[Instruction], tokenizer, seq_len: int) -> list[dict]:
    """Token ids and labels (-100 on the prompt: the loss is on the body) of each instruction, cut to
    ``seq_len``; one whose prompt leaves fewer than 8 tokens of target is left out."""
    eos = tokenizer.eos_token_id
    examples = []
    for ins in instructions:
        p = tokenizer(ins.prompt, add_special_tokens=False).input_ids
        t = tokenizer(ins.target, add_special_tokens=False).input_ids + ([eos] if eos is not None else [])
        if len(p) > seq_len - 8:
            continue
        ids = (p + t)[:seq_len]
        examples.append({"input_ids": ids, "labels": [-100] * len(p) + ids[len(p):]})
    return examples


def corpus_examples(windows: torch.Tensor) -> list[dict]:
    """Language-modelling examples: every token predicts the next one."""
    return [{"input_ids": w.tolist(), "labels": w.tolist()} for w in windows]


def batches(examples: list[dict], batch_size: int, steps: int, pad_id: int) -> Iterator[dict]:
    """``steps`` batches, cycling through ``examples`` in order; right-padded, padding masked out of attention
    and loss."""
    if not examples:
        raise LordError("lora: no training example could be built from the calibration corpus (functions with a "
                        "docstring and a body for lora.data=instructions; raise lora.seq_len, or use another corpus)")
    k = 0
    for _ in range(steps):
        chunk = [examples[(k + i) % len(examples)] for i in range(batch_size)]
        k += batch_size
        width = max(len(e["input_ids"]) for e in chunk)
        ids = torch.full((batch_size, width), pad_id, dtype=torch.long)
        labels = torch.full((batch_size, width), -100, dtype=torch.long)
        mask = torch.zeros((batch_size, width), dtype=torch.long)
        for j, e in enumerate(chunk):
            n = len(e["input_ids"])
            ids[j, :n], labels[j, :n], mask[j, :n] = torch.tensor(e["input_ids"]), torch.tensor(e["labels"]), 1
        yield {"input_ids": ids, "labels": labels, "attention_mask": mask}


# ---------------------------------------------------------------------------------------------- training

def target_names(model: nn.Module, architecture=None) -> list[str]:
    """Full names of every ``nn.Linear`` in the blocks (a group's shared ``A`` once)."""
    arch = architecture_for(model, architecture)
    return [f"{arch.blocks}.{i}.{name}" for i, block in enumerate(model.get_submodule(arch.blocks))
            for name in block_linears(block)]


def _lr_factor(step: int, warmup: int, steps: int) -> float:
    if step < warmup:
        return (step + 1) / (warmup + 1)
    return max(0.0, (steps - step) / max(1, steps - warmup))


def train_lora(model: nn.Module, batch_iter, settings: LoraSettings, targets: list[str],
               progress: bool = True) -> dict:
    """Attach LoRA adapters to ``targets``, train them on ``batch_iter`` (``settings.steps`` batches), merge them
    into the weights in place. Returns a record: losses, tokens, time, peak memory, parameter counts."""
    from peft import LoraConfig, get_peft_model

    device = next(model.parameters()).device
    requires_grad = {p: p.requires_grad for p in model.parameters()}
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=targets, bias="none")
    peft_model = get_peft_model(model, config)
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in trainable)
    opt = torch.optim.AdamW(trainable, lr=settings.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, settings.warmup, settings.steps))
    losses, tokens, target_tokens = [], 0, 0
    peft_model.train()
    try:
        with PeakMemory() as peak:
            t = time.perf_counter()
            for batch in progress_bar(batch_iter, total=settings.steps, desc="lora", unit="step",
                                      disable=not progress):
                batch = {k: v.to(device) for k, v in batch.items()}
                loss = peft_model(**batch, use_cache=False).loss
                if not torch.isfinite(loss):
                    raise LordError(f"lora: the training loss became {float(loss)} at step {len(losses)}; "
                                    "lower lora.lr")
                loss.backward()
                torch.nn.utils.clip_grad_norm_(trainable, settings.max_grad_norm)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                losses.append(float(loss.detach()))
                tokens += int(batch["attention_mask"].sum())
                target_tokens += int((batch["labels"][:, 1:] != -100).sum())
            seconds = time.perf_counter() - t
    finally:
        peft_model.eval()
        merged = peft_model.merge_and_unload()
        for p, flag in requires_grad.items():
            p.requires_grad_(flag)
    if merged is not model:  # peft merges in place; the pipeline keeps its reference to `model`
        raise RuntimeError("peft returned a new model object from merge_and_unload")
    tenth = max(1, len(losses) // 10)
    n_model = sum(p.numel() for p in model.parameters())
    return {"settings": asdict(settings), "targets": len(targets), "trainable_params": n_trainable,
            "model_params": n_model, "steps": len(losses), "tokens": tokens, "target_tokens": target_tokens,
            "seconds": seconds, "tokens_per_s": tokens / seconds if seconds > 0 else math.nan,
            "loss_first": sum(losses[:tenth]) / tenth, "loss_last": sum(losses[-tenth:]) / tenth,
            "losses": losses, "memory": peak.record(),
            # what training holds besides activations: weights, and the adapters' gradients and AdamW moments
            "state_bytes": sum(p.numel() * p.element_size() for p in model.parameters()) + 12 * n_trainable}

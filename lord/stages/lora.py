"""``lora`` (keys under ``lora``, defaults in ``lord.lora.LoraSettings``; set them in a preset or with
``+lora.steps=``): LoRA fine-tuning with peft on every linear of the blocks, merged into the weights afterwards,
so a LoRD model keeps its ranks (``lord.lora``). ``lora.data=instructions`` trains on a code-instruction set built
from the calibration corpus (signature + docstring -> body; the paper's A.5), ``lora.data=corpus`` on the corpus
itself (healing). After ``decompose`` it trains the LoRD model (``stages=[calibrate,decompose,lora]``); with
``method=dense`` the dense model. Records the losses, tokens/s and the training's peak memory."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import torch

from lord.errors import LordError
from lord.stages.base import STAGES, Stage

log = logging.getLogger(__name__)


def lora_settings(cfg):
    from lord.lora import LoraSettings

    return LoraSettings.from_config(cfg.get("lora"))


@STAGES.register("lora")
class Lora(Stage):
    @classmethod
    def tag(cls, cfg) -> str:
        lora = cfg.get("lora") or {}
        return f"{lora.get('data', 'instructions')}{lora.get('steps', 100)}"

    def needs_calibration_data(self) -> bool:
        return True

    def check_config(self) -> None:
        lora_settings(self.cfg)
        names = [s.name for s in self.earlier]
        if "prune" in names:
            raise LordError("stage 'lora' cannot follow 'prune': merging the adapters would fill the pruned zeros; "
                            "put lora before prune (stages=[calibrate,decompose,lora,prune])")
        if importlib.util.find_spec("peft") is None:
            raise LordError("stage 'lora' needs the peft package: pip install -r requirements-extras.txt")

    def apply(self, ctx) -> dict:
        from lord.corpora import tokenize_windows
        from lord.lora import (batches, corpus_examples, instruction_examples, instruction_set, target_names,
                               train_lora)
        from lord.stages.calibrate import architecture

        s = lora_settings(self.cfg)
        corpus = ctx.data.corpora()[0]  # the calibration corpus: never the validation split
        need = s.steps * s.batch_size
        if s.data == "instructions":
            found = instruction_set(corpus.records, seed=int(self.cfg.seed))
            examples = instruction_examples(found[:need], ctx.tokenizer, s.seq_len)
            source = {"functions_found": len(found)}
        else:
            windows = tokenize_windows(corpus, ctx.tokenizer, seq_len=s.seq_len, min_chars=0, all_windows=True,
                                       cache_dir=Path(self.cfg.paths.cache_dir) / "windows")
            g = torch.Generator().manual_seed(int(self.cfg.seed))  # windows from across the corpus, not a few files
            examples = corpus_examples(windows[torch.randperm(windows.shape[0], generator=g)[:need]])
            source = {"windows_available": int(windows.shape[0])}
        pad = ctx.tokenizer.pad_token_id if ctx.tokenizer.pad_token_id is not None else ctx.tokenizer.eos_token_id
        targets = target_names(ctx.model, architecture(self.cfg))
        record = train_lora(ctx.model, batches(examples, s.batch_size, s.steps, pad), s, targets)
        epochs = need / len(examples)
        log.info("LoRA (%s, r=%d) on %d linears: %d steps, %d tokens at %.0f tokens/s, loss %.3f -> %.3f, "
                 "%.2f epochs of %d examples", s.data, s.r, len(targets), record["steps"], record["tokens"],
                 record["tokens_per_s"], record["loss_first"], record["loss_last"], epochs, len(examples))
        return {"changed": True, **record, "examples": len(examples), "epochs": epochs,
                "data": {**corpus.describe(), **source}}

"""What the stages and the evaluation of one run share: the model, its data, its caches, its records."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig

from lord.cache import CompressionCache
from lord.corpora import (draw_windows, folder_corpus, stdlib_corpus, stdlib_tests_corpus, take_windows,
                          the_stack_calibration, the_stack_smol, tokenize_windows)
from lord.errors import LordError

DATA_SOURCES = ("stdlib", "the-stack-smol", "folder")
STDLIB_CALIBRATION_CORPORA = ("stdlib", "stdlib-tests")  # data=stdlib's data.calibration_corpus


def split_seq_len(cfg: DictConfig, split: str) -> int:
    """Tokens per window of ``split``: ``calibration.seq_len`` for calibration when set, else ``data.seq_len``."""
    own = cfg.calibration.get("seq_len") if split == "calibration" else None
    return int(own) if own is not None else int(cfg.data.seq_len)


def model_key(cfg: DictConfig, model_info: dict) -> str:
    """Names the weights a run starts from (the zoo's GGUF checksum, a local path, or the hub id)."""
    ident = model_info.get("gguf_sha256") or model_info.get("path") or cfg.model.name
    return f"{cfg.model.name}|{ident}|{cfg.model.dtype}"


class RunData:
    """The run's calibration and validation windows, tokenised (and cached) on first use."""

    def __init__(self, cfg: DictConfig, tokenizer):
        self.cfg, self.tokenizer = cfg, tokenizer
        self._corpora = None
        self._windows: dict[str, torch.Tensor] = {}

    def corpora(self):
        if self._corpora is None:
            d = self.cfg.data
            if d.name == "stdlib":
                tests, root = d.get("calibration_corpus", "stdlib") == "stdlib-tests", d.get("stdlib_root")
                self._corpora = (stdlib_tests_corpus(root) if tests
                                 else stdlib_corpus("calibration", d.validation_percent, root),
                                 stdlib_corpus("validation", d.validation_percent, root))
            elif d.name == "the-stack-smol":
                val = the_stack_smol(d.source)
                cal = the_stack_calibration(val, n_files=4 * int(self.cfg.calibration.n_windows),
                                            min_chars=d.min_chars, source=d.calibration_source,
                                            token=os.environ.get("HF_TOKEN"))
                self._corpora = (cal, val)
            elif d.name == "folder":
                self._corpora = (folder_corpus(d.calibration_path, "calibration"), folder_corpus(d.path, "validation"))
            else:
                raise LordError(f"data.name={d.name!r} is unknown; allowed: {', '.join(DATA_SOURCES)}")
        return self._corpora

    def check_split(self, split: str, n_windows: int | None) -> str:
        """Before any model loads: the split's files can fill ``n_windows`` windows (a token is at least one
        character, so a window needs a file of ``max(min_chars, seq_len)`` characters; one window per file
        unless ``all_windows``). Returns the split's content hash."""
        d, seq_len = self.cfg.data, split_seq_len(self.cfg, split)
        corpus = self.corpora()[0 if split == "calibration" else 1]
        need = max(d.min_chars, seq_len)
        long_enough = [r for r in corpus.records if r["size"] >= need]
        if not long_enough:
            key = "calibration.seq_len" if seq_len != d.seq_len else "data.seq_len"
            raise LordError(f"data: no file of the {split} corpus {corpus.name} ({len(corpus.records)} files) has "
                            f"the {need} characters one window needs (data.min_chars={d.min_chars}, "
                            f"{key}={seq_len}); lower them or use longer files")
        if n_windows is not None and not d.all_windows and len(long_enough) < n_windows:
            raise LordError(f"data: the {split} corpus {corpus.name} has {len(long_enough)} file(s) of at least "
                            f"{need} characters, one window each, but {n_windows} are asked for; lower the window "
                            "count, or set data.all_windows=true")
        return corpus.content_hash

    def windows(self, split: str) -> torch.Tensor:
        """``split`` is "calibration" (``calibration.n_windows``) or "validation" (``eval.n_windows``)."""
        if split not in self._windows:
            d = self.cfg.data
            corpus = self.corpora()[0 if split == "calibration" else 1]
            n = self.cfg.calibration.n_windows if split == "calibration" else self.cfg.eval.n_windows
            all_w = tokenize_windows(corpus, self.tokenizer, seq_len=split_seq_len(self.cfg, split),
                                     min_chars=d.min_chars,
                                     all_windows=d.all_windows, cache_dir=Path(self.cfg.paths.cache_dir) / "windows")
            draw = self.cfg.calibration.get("draw") if split == "calibration" else None
            self._windows[split] = (take_windows(all_w, n, f"{split} windows") if draw is None
                                    else draw_windows(all_w, n, draw, f"{split} windows"))
        return self._windows[split]

    def held_out_calibration(self, n: int, seq_len: int) -> torch.Tensor:
        """``n`` windows of the calibration split that the calibration windows do not include (the last ones of
        the split's order), cut to their first ``seq_len`` tokens: data for measuring, never for statistics."""
        d = self.cfg.data
        corpus = self.corpora()[0]
        all_w = tokenize_windows(corpus, self.tokenizer, seq_len=split_seq_len(self.cfg, "calibration"),
                                 min_chars=d.min_chars, all_windows=d.all_windows,
                                 cache_dir=Path(self.cfg.paths.cache_dir) / "windows")
        used = {tuple(w.tolist()) for w in self.windows("calibration")}
        free = [w for w in all_w if tuple(w.tolist()) not in used]
        if len(free) < n:
            raise LordError(f"sensitivity.windows={n}: the calibration corpus has {len(free)} window(s) besides the "
                            f"{len(used)} calibration windows; lower sensitivity.windows or calibration.n_windows")
        if seq_len > all_w.shape[1]:
            raise LordError(f"sensitivity.seq_len={seq_len} is longer than the calibration windows "
                            f"({all_w.shape[1]} tokens)")
        return torch.stack(free[-n:])[:, :seq_len]

    def describe(self) -> dict | None:
        """What was used (None when the run needed no data)."""
        if not self._windows:
            return None
        d, (cal, val) = self.cfg.data, self.corpora()
        used = {s: int(w.shape[0]) for s, w in self._windows.items()}
        return {"validation": val.describe() if "validation" in used else None,
                "calibration": cal.describe() if "calibration" in used else None,
                "seq_len": d.seq_len, "calibration_seq_len": split_seq_len(self.cfg, "calibration"),
                "min_chars": d.min_chars, "all_windows": d.all_windows,
                "calibration_draw": self.cfg.calibration.get("draw") if "calibration" in used else None,
                "validation_windows": used.get("validation"), "calibration_windows": used.get("calibration")}


@dataclass
class RunContext:
    cfg: DictConfig
    model: torch.nn.Module
    tokenizer: object
    model_info: dict
    data: RunData
    cache: CompressionCache
    artifacts: Path  # folder for files an evaluation writes besides the result (HumanEval samples)
    timings: dict = field(default_factory=dict)
    records: dict = field(default_factory=dict)  # per stage: what it did (goes into the result)
    decompositions: list = field(default_factory=list)  # every replaced target so far
    compressor: object = None  # the calibrate stage's Compressor, used by the stages after it
    identity: dict | None = None  # the run's identity (lord/identity.py), when it runs through experiments.run

    @property
    def changed(self) -> bool:
        """Whether any stage changed the model (a dense run's evaluation can reuse its baseline)."""
        return bool(self.decompositions) or any(r and r.get("changed") for r in self.records.values())

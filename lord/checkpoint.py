"""Save and reload compressed models.

A saved model is a directory with

* ``model.safetensors`` — the state dict (contiguous tensors; weights shared by tied modules stored once),
* ``config.json`` (+ ``generation_config.json``) — the unmodified Hugging Face config of the dense model,
* ``lord.json`` — which modules were replaced, with which rank and bias, and the tied-weight aliases,
* the tokenizer files, when a tokenizer is given.

``load_compressed`` rebuilds the dense architecture from ``config.json``, re-applies the structure
listed in ``lord.json``, and loads the state dict with ``strict=True``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from lord.structure import Decomposition, apply_structure, decompositions_from_json, decompositions_to_json
from lord.errors import LordError

FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
MANIFEST = "lord.json"


def save_compressed(model, path, decompositions: list[Decomposition], tokenizer=None, extra: dict | None = None):
    """Write the model atomically: into a temporary sibling directory, then renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp"))
    try:
        tensors, aliases, seen = {}, {}, {}
        for k, v in model.state_dict().items():
            key = (v.data_ptr(), v.dtype, tuple(v.shape), v.device)
            if v.numel() and key in seen:
                aliases[k] = seen[key]
                continue
            seen[key] = k
            tensors[k] = v.detach().cpu().contiguous()
        save_file(tensors, str(tmp / WEIGHTS), metadata={"format": "pt"})
        model.config.save_pretrained(tmp)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        manifest = {
            "format_version": FORMAT_VERSION,
            "decompositions": decompositions_to_json(decompositions),
            "aliases": aliases,
            **(extra or {}),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def read_manifest(path) -> dict:
    f = Path(path) / MANIFEST
    if not f.is_file():
        raise LordError(f"{path} has no {MANIFEST}: it is not a model saved by lord.save_compressed")
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise LordError(f"{f} is not valid JSON ({e}); re-save the model") from None


def load_compressed(path, dtype=torch.float32, device="cpu", with_tokenizer: bool = True):
    """(model, tokenizer or None) from a directory written by ``save_compressed``."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    manifest = read_manifest(path)
    decs = decompositions_from_json(manifest["decompositions"])
    config = AutoConfig.from_pretrained(path)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    apply_structure(model, decs, device="cpu", dtype=dtype)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    state = {}
    with safe_open(str(path / WEIGHTS), framework="pt") as f:
        for k in f.keys():
            state[k] = f.get_tensor(k)
    for alias, source in manifest.get("aliases", {}).items():
        if source in state:
            state[alias] = state[source]
    for k, shape in expected.items():
        if k not in state:
            raise LordError(f"{path / WEIGHTS} lacks tensor {k!r} that {MANIFEST} implies; the files do not belong together")
        if tuple(state[k].shape) != shape:
            raise LordError(
                f"{path / WEIGHTS}: tensor {k!r} has shape {tuple(state[k].shape)} but {MANIFEST} implies {shape}; "
                "the weights and lord.json disagree (re-save the model)"
            )
    model.load_state_dict(state, strict=True)
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()
    model.to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(path) if with_tokenizer and (path / "tokenizer_config.json").exists() else None
    return model, tokenizer

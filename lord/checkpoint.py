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
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from lord.structure import Decomposition, apply_structure, decompositions_from_json, decompositions_to_json
from lord.atomic import temp_dir
from lord.errors import LordError

FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
MANIFEST = "lord.json"


def save_compressed(model, path, decompositions: list[Decomposition], tokenizer=None, extra: dict | None = None):
    """Write the model atomically: into a temporary sibling directory, then renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir(path.parent)
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


# what lord.json must hold: each decomposition's keys with their types
_DECOMPOSITION_FIELDS = {"members": "list of str", "kind": "str", "block": "int or null", "rank": "int",
                         "d_in": "int", "d_outs": "list of int", "bias": "list of bool"}


def _type_ok(value, kind: str) -> bool:
    is_int = isinstance(value, int) and not isinstance(value, bool)
    return {"str": isinstance(value, str), "int": is_int and value > 0, "int or null": value is None or is_int,
            "list of str": isinstance(value, list) and all(isinstance(v, str) for v in value) and bool(value),
            "list of int": isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool)
                                                           for v in value) and bool(value),
            "list of bool": isinstance(value, list) and all(isinstance(v, bool) for v in value)}[kind]


def read_manifest(path) -> dict:
    """``lord.json``, checked: a known ``format_version`` and well-formed decompositions, else one line."""
    f = Path(path) / MANIFEST
    if not f.is_file():
        raise LordError(f"{path} has no {MANIFEST}: it is not a model saved by lord.save_compressed")
    try:
        manifest = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise LordError(f"{f} is not valid JSON ({e}); re-save the model") from None
    if not isinstance(manifest, dict):
        raise LordError(f"{f} must hold a JSON object, got {type(manifest).__name__}")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise LordError(f"{f}: format_version {version!r} is not one this lord reads ({FORMAT_VERSION}); "
                        "load it with the lord version that saved it, or re-save the model")
    decs = manifest.get("decompositions")
    if not isinstance(decs, list):
        raise LordError(f"{f}: 'decompositions' must be a list, got {type(decs).__name__}")
    for i, d in enumerate(decs):
        if not isinstance(d, dict):
            raise LordError(f"{f}: decompositions[{i}] must be an object, got {type(d).__name__}")
        for key, kind in _DECOMPOSITION_FIELDS.items():
            if key not in d:
                raise LordError(f"{f}: decompositions[{i}] lacks {key!r} ({kind}); re-save the model")
            if not _type_ok(d[key], kind):
                raise LordError(f"{f}: decompositions[{i}].{key} must be {kind}, got {d[key]!r}")
        if not len(d["members"]) == len(d["d_outs"]) == len(d["bias"]):
            raise LordError(f"{f}: decompositions[{i}] has {len(d['members'])} members but {len(d['d_outs'])} "
                            f"d_outs and {len(d['bias'])} bias flags")
    aliases = manifest.get("aliases", {})
    if not (isinstance(aliases, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in aliases.items())):
        raise LordError(f"{f}: 'aliases' must map tensor names to tensor names")
    return manifest


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

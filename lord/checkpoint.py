"""Save and reload compressed models as Hugging Face checkpoints.

A saved model is a directory that ``AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)``
loads in one call, with or without lord installed:

* ``model.safetensors`` — the state dict (a tied LM head stored once, as transformers does),
* ``config.json`` — the dense model's config with ``model_type: "lord"``, ``architectures: ["LordForCausalLM"]``,
  ``base_model_type`` and ``base_architectures`` (the dense type and class names), an ``auto_map`` naming
  ``modeling_lord.py``, and ``lord``: each replaced module with its rank, sizes and biases,
* ``modeling_lord.py`` — the self-contained model code (``lord/hf/modeling_lord.py``),
* for a quantized model, ``lord.quantization`` in ``config.json`` and each HQQ layer's packed state in the
  weights (``modeling_lord``'s docstring; loading it needs ``hqq``),
* ``generation_config.json``, the tokenizer files when a tokenizer is given, and a ``README.md`` model card
  with the Hub's metadata (``lord.model_card``).

Files and folders get the modes the umask gives new ones (``lord.atomic.replaced_directory``).

``load_compressed`` reads the same directory with lord's own copy of that code (it never runs code from the
directory), checks every tensor's shape against the structure before loading, and builds the model on the
meta device, so no dense weight is allocated. Directories of format 1 (dense ``config.json`` + ``lord.json``)
still load.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from lord.atomic import replaced_directory
from lord.errors import LordError
from lord.hf import modeling_lord
from lord.model_card import write_model_card
from lord.params import count_parameters
from lord.structure import Decomposition, decompositions_from_json, decompositions_to_json

FORMAT_VERSION = modeling_lord.FORMAT_VERSION
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
MODELING = "modeling_lord.py"
LEGACY_MANIFEST = "lord.json"  # format 1
AUTO_MAP = {"AutoConfig": "modeling_lord.LordConfig", "AutoModelForCausalLM": "modeling_lord.LordForCausalLM"}


def _tied_head_keys(model) -> set[str]:
    """State-dict keys of a tied output embedding (transformers ties it back on load, so it is not stored)."""
    head = model.get_output_embeddings()
    if not getattr(model.config, "tie_word_embeddings", False) or head is None:
        return set()
    return {n + ".weight" for n, m in model.named_modules() if m is head}


def _tensors_to_save(model) -> dict[str, torch.Tensor]:
    """The state dict with the tied output embedding left out; any other tensors that share storage are stored
    as copies, since safetensors cannot hold shared storage."""
    tied = _tied_head_keys(model)
    tensors, seen = {}, set()
    for k, v in model.state_dict().items():
        key = (v.data_ptr(), v.dtype, tuple(v.shape), v.device)
        if v.numel() and key in seen:
            if k in tied:
                continue
            v = v.clone()
        seen.add(key)
        tensors[k] = v.detach().cpu().contiguous()
    return tensors


def _check_savable(model) -> None:
    """The checkpoint's code rebuilds the base model from transformers; a model whose own code is remote cannot be."""
    cls = type(model)
    if getattr(model.config, "base_model_type", None) is None and not cls.__module__.startswith("transformers."):
        raise LordError(f"cannot save {cls.__name__} as a lord checkpoint: its code ({cls.__module__}) is not part of "
                        "transformers, so the saved modeling_lord.py could not rebuild it; use a model whose "
                        "architecture transformers ships")


def checkpoint_config(model, decompositions: list[Decomposition], lord_extra: dict | None = None):
    """The ``config.json`` of a compressed model: the dense config plus the ``lord`` structure and ``auto_map``."""
    base = model.config.to_dict()
    if base.get("model_type") == modeling_lord.MODEL_TYPE:  # re-saving a loaded checkpoint
        base["model_type"] = base["base_model_type"]
    lord = {"decompositions": decompositions_to_json(decompositions), **(lord_extra or {})}
    return modeling_lord.lord_config(base, lord, auto_map=AUTO_MAP)


def save_compressed(model, path, decompositions: list[Decomposition] | None = None, tokenizer=None,
                    card: dict | None = None, extra: dict | None = None) -> Path:
    """Write the model atomically (into a temporary sibling directory, then renamed into place).

    ``decompositions`` defaults to the structure of a model loaded with ``load_compressed``. ``card`` fills the
    model card (``lord.model_card``: base model, licence, method, the dense parameter count, the evaluation
    with its data, command, result file); ``extra`` is kept in ``config.json`` under ``lord``."""
    path = Path(path)
    _check_savable(model)
    if decompositions is None:
        lord = getattr(model.config, "lord", None)
        if not isinstance(lord, dict):
            raise LordError("save_compressed needs the decompositions (compress_model's report['decompositions']) "
                            "unless the model was loaded from a lord checkpoint")
        decompositions = decompositions_from_json(lord["decompositions"])
    quantization = modeling_lord.quantization_entry(model)
    if quantization is not None:
        extra = {**(extra or {}), "quantization": quantization}
    resized = resized_layers(model)
    if resized:
        extra = {**(extra or {}), "resized": resized}
    with replaced_directory(path) as tmp:
        config = checkpoint_config(model, decompositions, extra)
        save_file(_tensors_to_save(model), str(tmp / WEIGHTS), metadata={"format": "pt"})
        config.save_pretrained(tmp)
        shutil.copyfile(modeling_lord.__file__, tmp / MODELING)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        write_model_card(tmp, config, decompositions, card or {}, count_parameters(model))
    return path


def resized_layers(model) -> dict[str, list]:
    """``{layer: [in_features, out_features, bias]}`` of every layer whose size differs from the dense architecture's
    (neuron selection's smaller MLP layers: ``lord.resized`` in config.json, built by ``modeling_lord.resize_linears``
    before the weights load), found by comparing the model with a weightless dense model of its config."""
    from transformers import AutoConfig, AutoModelForCausalLM

    d = model.config.to_dict()
    model_type = d.get("base_model_type") or d["model_type"]
    d = {k: v for k, v in d.items() if k not in ("model_type", "lord", "base_model_type", "auto_map", "architectures",
                                                  "base_architectures", "transformers_version")}
    with torch.device("meta"):
        dense = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **d))
    out = {}
    for name, ref in dense.named_modules():
        if not isinstance(ref, torch.nn.Linear):
            continue
        try:
            mod = model.get_submodule(name)
        except AttributeError:
            continue
        size = (getattr(mod, "in_features", ref.in_features), getattr(mod, "out_features", ref.out_features))
        if size != (ref.in_features, ref.out_features):
            out[name] = [*size, getattr(mod, "bias", None) is not None]
    return out


# what the structure must hold: each decomposition's keys with their types
_DECOMPOSITION_FIELDS = {"members": "list of str", "kind": "str", "block": "int or null", "rank": "int",
                         "d_in": "int", "d_outs": "list of int", "bias": "list of bool"}


def _type_ok(value, kind: str) -> bool:
    is_int = isinstance(value, int) and not isinstance(value, bool)
    return {"str": isinstance(value, str), "int": is_int and value > 0, "int or null": value is None or is_int,
            "list of str": isinstance(value, list) and all(isinstance(v, str) for v in value) and bool(value),
            "list of int": isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool)
                                                           for v in value) and bool(value),
            "list of bool": isinstance(value, list) and all(isinstance(v, bool) for v in value)}[kind]


def _read_json(f: Path) -> dict:
    try:
        d = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise LordError(f"{f} is not valid JSON ({e}); re-save the model") from None
    if not isinstance(d, dict):
        raise LordError(f"{f} must hold a JSON object, got {type(d).__name__}")
    return d


def is_compressed_dir(path) -> bool:
    path = Path(path)
    if (path / LEGACY_MANIFEST).is_file():
        return True
    try:
        return json.loads((path / CONFIG).read_text()).get("model_type") == modeling_lord.MODEL_TYPE
    except (OSError, json.JSONDecodeError, AttributeError):
        return False


def read_structure(path) -> tuple[dict, dict, str]:
    """(dense config dict, checked ``lord`` entry, where it was read) of a saved directory, else one line."""
    path = Path(path)
    if not (path / CONFIG).is_file():
        raise LordError(f"{path} has no {CONFIG}: it is not a model saved by lord.save_compressed")
    config = _read_json(path / CONFIG)
    if config.get("model_type") == modeling_lord.MODEL_TYPE:
        where, lord = f"{path / CONFIG} ('lord')", config.get("lord")
        if not isinstance(lord, dict):
            raise LordError(f"{where} must be an object; re-save the model")
        if "base_model_type" not in config:
            raise LordError(f"{path / CONFIG} lacks 'base_model_type'; re-save the model")
        config = modeling_lord.base_config_dict(config)
    elif (path / LEGACY_MANIFEST).is_file():
        where, lord = str(path / LEGACY_MANIFEST), _read_json(path / LEGACY_MANIFEST)
    else:
        raise LordError(f"{path} is not a model saved by lord.save_compressed: its {CONFIG} has model_type "
                        f"{config.get('model_type')!r}, not {modeling_lord.MODEL_TYPE!r}, and there is no "
                        f"{LEGACY_MANIFEST}")
    version = lord.get("format_version")
    if version not in (1, FORMAT_VERSION):
        raise LordError(f"{where}: format_version {version!r} is not one this lord reads (1, {FORMAT_VERSION}); "
                        "load it with the lord version that saved it, or re-save the model")
    decs = lord.get("decompositions")
    if not isinstance(decs, list):
        raise LordError(f"{where}: 'decompositions' must be a list, got {type(decs).__name__}")
    for i, d in enumerate(decs):
        if not isinstance(d, dict):
            raise LordError(f"{where}: decompositions[{i}] must be an object, got {type(d).__name__}")
        for key, kind in _DECOMPOSITION_FIELDS.items():
            if key not in d:
                raise LordError(f"{where}: decompositions[{i}] lacks {key!r} ({kind}); re-save the model")
            if not _type_ok(d[key], kind):
                raise LordError(f"{where}: decompositions[{i}].{key} must be {kind}, got {d[key]!r}")
        if not len(d["members"]) == len(d["d_outs"]) == len(d["bias"]):
            raise LordError(f"{where}: decompositions[{i}] has {len(d['members'])} members but {len(d['d_outs'])} "
                            f"d_outs and {len(d['bias'])} bias flags")
    _check_quantization(lord.get("quantization"), where)
    _check_resized(lord.get("resized"), where)
    aliases = lord.get("aliases", {})
    if not (isinstance(aliases, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in aliases.items())):
        raise LordError(f"{where}: 'aliases' must map tensor names to tensor names")
    return config, lord, where


def _check_quantization(q, where: str) -> None:
    if q is None:
        return
    modules = q.get("modules") if isinstance(q, dict) else None
    ok = (isinstance(q, dict) and q.get("backend") == "hqq" and isinstance(modules, dict) and all(
        isinstance(v, dict) and all(isinstance(v.get(k), int) and not isinstance(v.get(k), bool)
                                    for k in ("bits", "group_size")) for v in modules.values()))
    if not ok:
        raise LordError(f"{where}: 'quantization' must be {{\"backend\": \"hqq\", "
                        f"\"modules\": {{name: {{\"bits\": int, \"group_size\": int}}}}}}, "
                        f"got {q!r}; re-save the model")


def _check_resized(resized, where: str) -> None:
    ok = isinstance(resized, dict) and all(
        isinstance(v, list) and len(v) == 3 and _type_ok(v[0], "int") and _type_ok(v[1], "int")
        and isinstance(v[2], bool) for v in resized.values())
    if resized is not None and not ok:
        raise LordError(f"{where}: 'resized' must map layer names to [in_features, out_features, bias], got "
                        f"{resized!r}; re-save the model")


def _check_shapes(path: Path, model, where: str) -> None:
    """Every tensor the structure implies is in the weights file with that shape (read from its header); a
    quantized layer's float weight is not stored, its packed weight ``W_q`` is."""
    quantized = modeling_lord.quantized_prefixes(model.config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith(quantized)}
    with safe_open(str(path / WEIGHTS), framework="pt") as f:
        stored = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    for prefix in quantized:
        if prefix + "W_q" not in stored:
            raise LordError(f"{path / WEIGHTS} lacks tensor {prefix + 'W_q'!r} of a layer {where} lists as quantized; "
                            "the files do not belong together")
    tied = _tied_head_keys(model)
    for k, shape in expected.items():
        if k not in stored:
            if k in tied:
                continue
            raise LordError(f"{path / WEIGHTS} lacks tensor {k!r} that {where} implies; the files do not belong "
                            "together")
        if stored[k] != shape:
            raise LordError(f"{path / WEIGHTS}: tensor {k!r} has shape {stored[k]} but {where} implies {shape}; "
                            "the weights and the structure disagree (re-save the model)")


def saved_config(path) -> tuple:
    """(config, where its structure was read) of a saved directory, built by lord's own code: nothing from the
    directory runs."""
    base, lord, where = read_structure(path)
    lord = {k: v for k, v in lord.items() if k not in ("format_version", "aliases")}
    return modeling_lord.lord_config(base, lord, auto_map=AUTO_MAP), where


def load_compressed(path, dtype=torch.float32, device="cpu", with_tokenizer: bool = True):
    """(model, tokenizer or None) from a directory written by ``save_compressed``."""
    from transformers import AutoTokenizer

    path = Path(path)
    config, where = saved_config(path)
    if config.lord.get("quantization"):
        import importlib.util

        if torch.device(device).type != "cpu":
            raise LordError(f"{path} holds HQQ-quantized layers, which load on the CPU only here (HQQ keeps its "
                            "scales outside the module's parameters); load it with device=cpu")
        if importlib.util.find_spec("hqq") is None:
            raise LordError(f"{path} holds HQQ-quantized layers: loading it needs the hqq package "
                            f"({modeling_lord.HQQ_HINT}, or pip install -r requirements-extras.txt)")
    model_class = modeling_lord.model_class_for(config)
    with torch.device("meta"):
        skeleton = model_class(config)
    _check_shapes(path, skeleton, where)
    del skeleton
    model = model_class.from_pretrained(path, config=config, dtype=dtype)
    model.to(device).eval()
    tokenizer = None
    if with_tokenizer and (path / "tokenizer_config.json").exists():  # config given: transformers need not read
        tokenizer = AutoTokenizer.from_pretrained(path, config=config)  # config.json (remote code) for it
    return model, tokenizer

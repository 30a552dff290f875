"""LoRD-compressed causal language models for Hugging Face transformers (``trust_remote_code``).

``lord.save_compressed`` copies this file next to the weights, and ``config.json`` names it in ``auto_map``, so

    AutoModelForCausalLM.from_pretrained(directory, trust_remote_code=True)

loads a compressed model in one call, where lord is not installed. This file imports only the standard library,
torch, transformers and safetensors wherever transformers' import scan of remote code looks
(``transformers.dynamic_module_utils.get_imports``): ``hqq``, which only a quantized checkpoint needs, is
imported inside ``try`` blocks by the functions that need it, and ``peft`` never. It is also the one definition
lord itself uses (``lord.modules`` re-exports its classes).

``config.json`` is the dense model's config with these changes: ``model_type`` is ``"lord"`` (a type
transformers does not know, so loading without ``trust_remote_code`` -- in a process where lord has not
registered it -- fails instead of building a dense model with random weights), ``architectures`` is
``["LordForCausalLM"]`` (so no tool that dispatches on it maps the folder to a dense class),
``base_model_type`` and ``base_architectures`` keep the original type and class names, and ``lord`` lists each
replaced module: its members, rank, input and output sizes and which members have an output bias.
``LordConfig`` then becomes an instance of a subclass of the base model's config class, and the model an
instance of ``LordForCausalLM``, a subclass of the base model's class (e.g. ``Qwen2ForCausalLM``) whose listed
modules are low-rank -- built on the meta device by transformers, so no dense weight is ever allocated, with
``generate()`` and everything else of the base class intact. Importing this file registers ``"lord"`` with
transformers' Auto classes (and, where peft is loaded, "all-linear" as peft's default LoRA targets for it).

Modules (the paper's one-line change, §3.3): a layer becomes ``nn.Sequential(nn.Linear(in, r, bias=False),
nn.Linear(r, out))`` (keys ``<name>.0.weight``, ``<name>.1.weight``, ``<name>.1.bias``); a group (q/k/v, or
gate/up, §3.1) shares one ``A`` at ``<parent>.lord_shared__<member names>.weight`` and each member applies
its own ``B`` (``<name>.B.weight``, ``<name>.B.bias``) to whatever module sits at that attribute of the parent
(so an adapter peft puts there is used); an embedding becomes ``Embedding(vocab, r)`` followed by
``Linear(r, d)``.

Quantized checkpoints (``stages=[..., quantize]`` with ``paths.save_dir``): ``lord.quantization`` lists every
layer stored as HQQ packed weights -- ``{"backend": "hqq", "modules": {name: {"bits", "group_size"}}}`` -- whose
tensors are HQQ's own safetensors-ready state (``<name>.W_q``, ``<name>.scale``, ``<name>.zero``, ...). Loading
one needs the ``hqq`` package (without it, loading fails in one line naming it); the layers are rebuilt from
those tensors after transformers has loaded the rest, so the model computes exactly what the quantized model
that was saved computed. CPU only: HQQ keeps its scales outside the module's parameters, and
``.to(device)`` does not move them.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import sys
import weakref
from pathlib import Path

import torch
import torch.nn as nn
from transformers import PreTrainedConfig, PreTrainedModel

MODEL_TYPE = "lord"
FORMAT_VERSION = 2
ARCHITECTURE = "LordForCausalLM"  # config.json's ``architectures``, whatever the base class


# ---------------------------------------------------------------------------------------------- modules

# in a decomposed layer's repr, hence in peft's error when a LoRA config names one (peft wraps only the factors)
LORA_HINT = "; LoRA/peft: target its factors, model.lora_target_modules(names), or 'all-linear'"


class _TwoFactors(nn.Sequential):
    """``Sequential(first, Linear(r, out))``: what a factored layer and a factored embedding share."""

    @property
    def out_features(self) -> int:
        return self[1].out_features

    @property
    def rank(self) -> int:
        return self[1].in_features

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}{LORA_HINT}"


class LowRankLinear(_TwoFactors):
    """``B @ A`` with an optional output bias: ``nn.Sequential(Linear(in, r, bias=False), Linear(r, out))``."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True, device=None, dtype=None):
        kw = dict(device=device, dtype=dtype)
        super().__init__(nn.Linear(in_features, rank, bias=False, **kw), nn.Linear(rank, out_features, bias=bias, **kw))

    @property
    def in_features(self) -> int:
        return self[0].in_features


class LowRankEmbedding(_TwoFactors):
    """An embedding table factored as ``Embedding(vocab, r)`` followed by ``Linear(r, d)``."""

    def __init__(self, num_embeddings: int, embedding_dim: int, rank: int, bias: bool = False, padding_idx=None,
                 device=None, dtype=None):
        kw = dict(device=device, dtype=dtype)
        super().__init__(nn.Embedding(num_embeddings, rank, padding_idx=padding_idx, **kw),
                         nn.Linear(rank, embedding_dim, bias=bias, **kw))

    @property
    def num_embeddings(self) -> int:
        return self[0].num_embeddings

    @property
    def embedding_dim(self) -> int:
        return self.out_features

    @property
    def in_features(self) -> int:
        return self.num_embeddings

    def extra_repr(self) -> str:
        return (f"num_embeddings={self.num_embeddings}, embedding_dim={self.embedding_dim}, "
                f"rank={self.rank}{LORA_HINT}")


class SharedBottleneck(nn.Linear):
    """The ``A`` factor shared by a group; computes ``A x`` once per distinct input tensor."""

    def __init__(self, in_features: int, rank: int, device=None, dtype=None):
        super().__init__(in_features, rank, bias=False, device=device, dtype=dtype)
        self._last: tuple[weakref.ref, torch.Tensor] | None = None

    @property
    def rank(self) -> int:
        return self.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._last is not None and self._last[0]() is x:
            return self._last[1]
        out = super().forward(x)
        self._last = (weakref.ref(x), out)
        return out


class GroupedLowRankLinear(nn.Module):
    """One member of a group: its own ``B`` block applied to the group's shared bottleneck.

    In a model (``apply_structure``) the bottleneck is read from the members' parent at its attribute
    (``lord_shared__...``) on every call, so whatever sits there is what runs: the ``SharedBottleneck``, an HQQ
    layer that replaced it, or a peft LoRA layer wrapping it. A member built on its own calls the module it was
    given."""

    def __init__(self, shared: SharedBottleneck, out_features: int, bias: bool = True, device=None, dtype=None):
        super().__init__()
        self.B = nn.Linear(shared.rank, out_features, bias=bias, device=device, dtype=dtype)
        # plain attributes, not submodules: the shared weights are saved once, on the parent
        object.__setattr__(self, "_given", shared)
        object.__setattr__(self, "_owner", None)
        object.__setattr__(self, "_owner_attr", None)

    def bind(self, parent: nn.Module, attr: str) -> None:
        """Call ``getattr(parent, attr)`` from now on."""
        object.__setattr__(self, "_owner", parent)
        object.__setattr__(self, "_owner_attr", attr)

    @property
    def _shared(self) -> nn.Module:
        return self._given if self._owner is None else getattr(self._owner, self._owner_attr)

    @property
    def in_features(self) -> int:
        return self._shared.in_features

    @property
    def out_features(self) -> int:
        return self.B.out_features

    @property
    def rank(self) -> int:
        return self.B.in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.B(self._shared(x))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
                f"A shared{LORA_HINT}")


def shared_name(members) -> str:
    """Attribute name of a group's bottleneck on the members' parent: ``lord_shared__q_proj__k_proj__v_proj``."""
    return "lord_shared__" + "__".join(m.rsplit(".", 1)[-1] for m in members)


def set_module(model: nn.Module, name: str, mod: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, mod)


def replace_linear(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` at ``name`` (group members bound to that attribute call it from then on; an unbound member
    that was given the old module is given ``new``)."""
    old = model.get_submodule(name)
    set_module(model, name, new)
    for m in model.modules():
        if isinstance(m, GroupedLowRankLinear) and m._owner is None and m._given is old:
            object.__setattr__(m, "_given", new)


# ---------------------------------------------------------------------------------------------- quantized layers

HQQ_HINT = "pip install hqq==0.2.8.post1"


def _hqq_quantize_module(what: str):
    """``hqq.core.quantize``, or an ImportError of one line naming the package and how to install it. (The import
    sits in a ``try`` so that transformers' scan of this file does not require hqq of every checkpoint.)"""
    try:
        import hqq.core.quantize as quantize
    except ImportError:
        raise ImportError(f"{what} needs the hqq package, which is not installed: {HQQ_HINT}") from None
    return quantize


@functools.cache
def quantized_linear_class() -> type:
    """``hqq``'s ``HQQLinear`` (packed integer weights, dequantized per forward by its PyTorch backend) that also
    says how many weights it stands for."""
    quantize = _hqq_quantize_module("quantized layers")
    quantize.HQQLinear.set_backend(quantize.HQQBackend.PYTORCH)

    class QuantizedLinear(quantize.HQQLinear):
        def dense_parameter_count(self) -> int:
            return self.in_features * self.out_features + (self.bias.numel() if self.bias is not None else 0)

    return QuantizedLinear


def quantization_entry(model: nn.Module) -> dict | None:
    """``lord.quantization`` of a model whose layers some quantization replaced by HQQ ones (None when none)."""
    try:
        from hqq.core.quantize import HQQLinear
    except ImportError:
        return None
    modules = {name: {"bits": int(m.meta["nbits"]), "group_size": int(m.meta["group_size"])}
               for name, m in model.named_modules() if isinstance(m, HQQLinear)}
    return {"backend": "hqq", "modules": modules} if modules else None


def quantized_prefixes(config) -> tuple[str, ...]:
    q = (getattr(config, "lord", None) or {}).get("quantization") or {}
    return tuple(f"{name}." for name in q.get("modules", {}))


def load_quantized(model: nn.Module, quantization: dict, tensors, dtype) -> None:
    """Replace each layer ``quantization`` lists by an HQQ layer holding its stored state; ``tensors(name)``
    returns ``{key: tensor}`` of the keys under ``name.``."""
    quantize = _hqq_quantize_module("a checkpoint with HQQ-quantized layers (config.json: lord.quantization)")
    cls = quantized_linear_class()
    for name, q in quantization["modules"].items():
        layer = cls(None, quant_config=quantize.BaseQuantizeConfig(nbits=q["bits"], group_size=q["group_size"]),
                    compute_dtype=dtype, device="cpu", initialize=False)
        state = tensors(name)
        if "W_q" not in state:
            raise ValueError(f"the weights lack {name}.W_q that config.json's lord.quantization lists: the files do "
                             "not belong together; re-save the model")
        layer.load_state_dict(state)
        replace_linear(model, name, layer)


def _stored_tensors(pretrained_model_name_or_path, prefixes: tuple[str, ...], **hub) -> dict[str, torch.Tensor]:
    """The tensors under ``prefixes`` in a checkpoint's safetensors file(s) (a directory or a hub id)."""
    from safetensors import safe_open
    from transformers.utils import cached_file

    index = cached_file(pretrained_model_name_or_path, "model.safetensors.index.json", **hub,
                        _raise_exceptions_for_missing_entries=False)
    if index:
        files = sorted(set(json.loads(Path(index).read_text())["weight_map"].values()))
        paths = [cached_file(pretrained_model_name_or_path, f, **hub) for f in files]
    else:
        paths = [cached_file(pretrained_model_name_or_path, "model.safetensors", **hub)]
    out = {}
    for p in paths:
        with safe_open(str(p), framework="pt") as f:
            out.update({k: f.get_tensor(k) for k in f.keys() if k.startswith(prefixes)})
    return out


def _untie_if_needed(model: nn.Module, decompositions: list[dict]) -> None:
    """Decomposing the embedding or the LM head of a tied model unties them first."""
    if not any(d["kind"] in ("embed", "lm_head") for d in decompositions):
        return
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "tie_word_embeddings", False):
        out = model.get_output_embeddings()
        if out is not None:
            out.weight = nn.Parameter(out.weight.detach().clone())
        config.tie_word_embeddings = False


def apply_structure(model: nn.Module, decompositions: list[dict], device=None, dtype=None) -> dict[str, nn.Module]:
    """Swap each listed target's modules for empty low-rank ones of the right shapes; returns the new modules.

    Each decomposition is a dict with ``members`` (full module names), ``kind``, ``rank``, ``d_in``, ``d_outs``
    and ``bias`` (one flag per member)."""
    _untie_if_needed(model, decompositions)
    new: dict[str, nn.Module] = {}
    for d in decompositions:
        members, rank = d["members"], d["rank"]
        first = model.get_submodule(members[0])
        ref = first.weight
        kw = dict(device=device if device is not None else ref.device, dtype=dtype if dtype is not None else ref.dtype)
        if d["kind"] == "embed":
            new[members[0]] = LowRankEmbedding(first.num_embeddings, d["d_outs"][0], rank, bias=d["bias"][0],
                                               padding_idx=first.padding_idx, **kw)
        elif len(members) == 1:
            new[members[0]] = LowRankLinear(d["d_in"], d["d_outs"][0], rank, bias=d["bias"][0], **kw)
        else:
            shared = SharedBottleneck(d["d_in"], rank, **kw)
            parent_name = members[0].rsplit(".", 1)[0]
            parent = model.get_submodule(parent_name)
            parent.add_module(shared_name(members), shared)
            new[f"{parent_name}.{shared_name(members)}"] = shared
            for m, d_out, b in zip(members, d["d_outs"], d["bias"]):
                new[m] = GroupedLowRankLinear(shared, d_out, bias=b, **kw)
                new[m].bind(parent, shared_name(members))
        for m in members:
            set_module(model, m, new[m])
    return new


def resize_linears(model: nn.Module, resized: dict | None) -> dict[str, nn.Module]:
    """Replace each layer ``resized`` lists -- ``{name: [in_features, out_features, bias]}``, ``lord.resized`` in
    config.json: the smaller MLP layers of neuron selection -- by an empty ``nn.Linear`` of that size; returns them."""
    new = {}
    for name, (d_in, d_out, bias) in (resized or {}).items():
        try:
            ref = model.get_submodule(name).weight
        except AttributeError:
            raise ValueError(f"config.json's lord.resized names {name!r}, which is no layer of this model: the files "
                             "do not belong together; re-save the model") from None
        new[name] = nn.Linear(d_in, d_out, bias=bias, device=ref.device, dtype=ref.dtype)
        set_module(model, name, new[name])
    return new


# ---------------------------------------------------------------------------------------------- config

def _base_config_class(base_model_type: str):
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if base_model_type not in CONFIG_MAPPING:
        raise ValueError(f"this LoRD checkpoint compresses a {base_model_type!r} model, which this transformers "
                         "does not know; install the transformers version that saved it (config.json: "
                         "transformers_version)")
    return CONFIG_MAPPING[base_model_type]


def base_architectures(config_dict: dict) -> list[str]:
    """The dense class names of a LoRD config dict: ``base_architectures``, or, in folders written before it
    existed, ``architectures`` less the names of LoRD's own classes."""
    names = config_dict.get("base_architectures") or [a for a in config_dict.get("architectures") or []
                                                      if isinstance(a, str) and not a.startswith("Lord")]
    return [a for a in names if isinstance(a, str)] if isinstance(names, list) else []


def base_config_dict(config_dict: dict) -> dict:
    """The dense model's config dict of a LoRD config dict: its base ``model_type`` and class names, without
    the LoRD entries."""
    archs = base_architectures(config_dict)
    d = {k: v for k, v in config_dict.items()
         if k not in ("lord", "base_model_type", "auto_map", "architectures", "base_architectures")}
    d["model_type"] = config_dict["base_model_type"]
    if archs:
        d["architectures"] = archs
    return d


def _with_lord_architectures(config_dict: dict) -> dict:
    """``architectures`` names the LoRD class (never a dense one, which would load the folder with random
    low-rank layers); the base class names move to ``base_architectures``."""
    d = {k: v for k, v in config_dict.items() if k != "base_architectures"}
    base = base_architectures(config_dict)
    if base:
        d["base_architectures"] = base
    d["architectures"] = [ARCHITECTURE]
    return d


class LordConfig(PreTrainedConfig):
    """The config of a LoRD checkpoint. ``from_dict`` returns an instance of ``config_class_for(<base type>)``:
    the base model's config class with ``model_type = "lord"``, so the base model's code reads every
    attribute it expects."""

    model_type = MODEL_TYPE

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        if cls is LordConfig:
            lord = config_dict.get("lord")
            if not isinstance(lord, dict) or lord.get("format_version") != FORMAT_VERSION:
                raise ValueError(f"config.json: 'lord' must be an object with format_version {FORMAT_VERSION}; "
                                 "re-save the model with the lord version that reads it")
            return config_class_for(config_dict["base_model_type"]).from_dict(config_dict, **kwargs)
        return super().from_dict(_with_lord_architectures(config_dict), **kwargs)

    def to_dict(self) -> dict:
        # peft reads a model's config with to_dict() just before it looks up LoRA's default target modules by
        # model_type: where peft is loaded by then, it knows "lord" (_register_with_peft)
        _register_with_peft()
        return super().to_dict()


_CONFIG_CLASSES: dict[type, type] = {}


def config_class_for(base_model_type: str) -> type:
    """``LordConfig`` on top of the base model's config class (one class per base class)."""
    base = _base_config_class(base_model_type)
    if base not in _CONFIG_CLASSES:
        _CONFIG_CLASSES[base] = type("LordConfig", (LordConfig, base), {"model_type": MODEL_TYPE,
                                                                        "__module__": __name__})
        _register_with_transformers(_CONFIG_CLASSES[base])
    return _CONFIG_CLASSES[base]


def lord_config(base_config_dict: dict, lord: dict, auto_map: dict | None = None) -> PreTrainedConfig:
    """The config of a compressed model from the dense model's config dict (or a LoRD one: re-saving) and the
    ``lord`` entry."""
    d = {k: v for k, v in base_config_dict.items() if k not in ("auto_map", "lord", "base_model_type")}
    base_type = d.pop("model_type")
    d.update(base_model_type=base_type, lord={"format_version": FORMAT_VERSION, **lord})
    if auto_map:
        d["auto_map"] = auto_map
    return config_class_for(base_type).from_dict(d)


# ---------------------------------------------------------------------------------------------- model

def _base_model_class(config) -> type:
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(config.base_model_type)
    if name is None:  # a base type transformers maps to no causal-LM class: the saved class names
        archs = [a for a in (getattr(config, "base_architectures", None) or []) if hasattr(transformers, a)]
        if not archs:
            raise ValueError(f"no causal-LM class for base model type {config.base_model_type!r} in this "
                             "transformers (config.json: base_architectures)")
        name = archs[0]
    return getattr(transformers, name)


_MODEL_CLASSES: dict[type, type] = {}


def model_class_for(config) -> type:
    """The base model's class with the low-rank structure of ``config.lord`` (one class per base class)."""
    base = _base_model_class(config)
    if base not in _MODEL_CLASSES:
        # named ARCHITECTURE whatever the base: transformers' save_pretrained writes the class name into
        # config.json's architectures, and its pipelines look the name up among the causal LMs
        _MODEL_CLASSES[base] = type(ARCHITECTURE, (_LordMixin, base), {
            "config_class": type(config), "__module__": __name__})
    cls = _MODEL_CLASSES[base]
    cls.config_class = type(config)
    return cls


class _LordMixin:
    """What the compressed class adds to its base class: the structure, a strict load, self-contained saves."""

    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        resize_linears(self, config.lord.get("resized"))
        apply_structure(self, config.lord["decompositions"])
        # a quantized layer's float weight is not stored and its HQQ state is read after loading (load_quantized)
        patterns = {"^" + re.escape(p) for p in quantized_prefixes(config)}
        self._keys_to_ignore_on_load_missing = set(self._keys_to_ignore_on_load_missing or ()) | patterns
        self._keys_to_ignore_on_load_unexpected = set(self._keys_to_ignore_on_load_unexpected or ()) | patterns

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        config = kwargs.get("config")
        if quantized_prefixes(config):  # before any weight is read
            _hqq_quantize_module("this LoRD checkpoint holds HQQ-quantized layers (config.json: lord.quantization); "
                                 "loading it")
        wants_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True,
                                              **kwargs)
        prefixes = quantized_prefixes(model.config)
        missing = sorted(k for k in info.get("missing_keys", ()) if not k.startswith(prefixes))
        if missing:
            raise ValueError(f"the weights lack {len(missing)} tensors that config.json's 'lord' structure implies "
                             f"(first: {missing[:3]}): the files do not belong together; re-save the model")
        if prefixes:
            hub = {k: kwargs[k] for k in ("cache_dir", "revision", "token", "local_files_only") if k in kwargs}
            stored = _stored_tensors(pretrained_model_name_or_path, prefixes, **hub)
            dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
            load_quantized(model, model.config.lord["quantization"],
                           lambda name: {k[len(name) + 1:]: v for k, v in stored.items() if k.startswith(name + ".")},
                           dtype)
        return (model, info) if wants_info else model

    def save_pretrained(self, save_directory, *args, **kwargs):
        super().save_pretrained(save_directory, *args, **kwargs)
        target = Path(save_directory) / Path(__file__).name
        if Path(__file__).resolve() != target.resolve():
            shutil.copyfile(__file__, target)  # the directory stays loadable with trust_remote_code

    def lora_target_modules(self, names) -> list[str]:
        """The modules LoRA (peft) can wrap that stand for the layers ``names`` (e.g. ``["q_proj", "v_proj"]``),
        matched as peft matches a list (a module whose full name is, or ends with ``.<name>``), as full names
        for ``LoraConfig(target_modules=...)``: a layer left dense is itself; a decomposed layer or embedding is
        its two factors (``<name>.0``, ``<name>.1``); a group member is its own ``B`` (``<name>.B``) -- its ``A``
        is shared with the other members of its group, so it is not adapted for one of them (target it by its
        own name, ``<parent>.lord_shared__...``, or use ``"all-linear"``). peft itself cannot do this: it
        matches names only, and a decomposed layer is not one of the module types it wraps."""
        names = [names] if isinstance(names, str) else list(names)
        out = []
        for name in names:
            found = [(full, m) for full, m in self.named_modules() if full == name or full.endswith("." + name)]
            if not found:
                raise ValueError(f"no module of this model is named {name!r} or ends with '.{name}'")
            for full, m in found:
                if isinstance(m, GroupedLowRankLinear):
                    out.append(f"{full}.B")
                elif isinstance(m, _TwoFactors):
                    out += [f"{full}.0", f"{full}.1"]
                else:
                    out.append(full)
        return sorted(set(out))


class LordForCausalLM(PreTrainedModel):
    """The ``auto_map`` entry: dispatches to ``model_class_for(config)``, a subclass of the base model's class."""

    config_class = LordConfig

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, config=None, **kwargs):
        if config is None:
            config = LordConfig.from_pretrained(pretrained_model_name_or_path)
        return model_class_for(config).from_pretrained(pretrained_model_name_or_path, *args, config=config, **kwargs)

    @classmethod
    def _from_config(cls, config, **kwargs):
        return model_class_for(config)._from_config(config, **kwargs)


# ---------------------------------------------------------------------------------------------- registration

def _register_with_transformers(config_class: type) -> None:
    """``config_class`` -> ``LordForCausalLM`` in ``AutoModelForCausalLM`` (and ``"lord"`` -> ``LordConfig`` in
    ``AutoConfig``), so ``pipeline("text-generation", ...)`` accepts the model. Registering again (this file
    imported twice, or another checkpoint's copy of it) replaces the entry; a transformers whose rules differ
    is left alone (loading goes through ``auto_map`` either way)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        if config_class is LordConfig:
            AutoConfig.register(MODEL_TYPE, LordConfig, exist_ok=True)
            # the text-generation pipeline checks the class name against this table of names
            from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

            MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.setdefault(MODEL_TYPE, ARCHITECTURE)
        AutoModelForCausalLM.register(config_class, LordForCausalLM, exist_ok=True)
    except (ImportError, ValueError, TypeError):
        pass


def _register_with_peft() -> None:
    """peft picks LoRA's default target modules by ``model_type``; for ``"lord"`` they are ``"all-linear"``
    (every linear layer but the output head: the factors, and the layers left dense). Only where peft is
    already imported: this file never imports it."""
    constants = sys.modules.get("peft.utils.constants")
    mapping = getattr(constants, "TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING", None)
    if isinstance(mapping, dict):
        mapping.setdefault(MODEL_TYPE, "all-linear")


_register_with_transformers(LordConfig)
_register_with_peft()

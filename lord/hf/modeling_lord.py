"""LoRD-compressed causal language models for Hugging Face transformers (``trust_remote_code``).

``lord.save_compressed`` copies this file next to the weights, and ``config.json`` names it in ``auto_map``, so

    AutoModelForCausalLM.from_pretrained(directory, trust_remote_code=True)

loads a compressed model in one call, where lord is not installed: this file imports only torch and
transformers. It is also the one definition lord itself uses (``lord.modules`` re-exports its classes).

``config.json`` is the dense model's config with three changes: ``model_type`` is ``"lord"`` (a type
transformers does not know, so loading without ``trust_remote_code`` fails instead of building a dense model
with random weights), ``base_model_type`` keeps the original type, and ``lord`` lists each replaced module:
its members, rank, input and output sizes and which members have an output bias. ``LordConfig`` then
becomes an instance of a subclass of the base model's config class, and the model an instance of a subclass
of the base model's class (e.g. ``Qwen2ForCausalLM``) whose listed modules are low-rank — built on the meta
device by transformers, so no dense weight is ever allocated, with ``generate()`` and everything else of
the base class intact.

Modules (the paper's one-line change, §3.3): a layer becomes ``nn.Sequential(nn.Linear(in, r, bias=False),
nn.Linear(r, out))`` (keys ``<name>.0.weight``, ``<name>.1.weight``, ``<name>.1.bias``); a group (q/k/v, or
gate/up, §3.1) shares one ``A`` at ``<parent>.lord_shared__<member names>.weight`` and each member applies
its own ``B`` (``<name>.B.weight``, ``<name>.B.bias``); an embedding becomes ``Embedding(vocab, r)`` followed
by ``Linear(r, d)``.

Quantized checkpoints (``stages=[..., quantize]`` with ``paths.save_dir``): ``lord.quantization`` lists every
layer stored as HQQ packed weights -- ``{"backend": "hqq", "modules": {name: {"bits", "group_size"}}}`` -- whose
tensors are HQQ's own safetensors-ready state (``<name>.W_q``, ``<name>.scale``, ``<name>.zero``, ...). Loading
one needs the ``hqq`` package; the layers are rebuilt from those tensors after transformers has loaded the rest,
so the model computes exactly what the quantized model that was saved computed. CPU only: HQQ keeps its scales
outside the module's parameters, and ``.to(device)`` does not move them.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import weakref
from pathlib import Path

import torch
import torch.nn as nn
from transformers import PreTrainedConfig, PreTrainedModel

MODEL_TYPE = "lord"
FORMAT_VERSION = 2


# ---------------------------------------------------------------------------------------------- modules

class _TwoFactors(nn.Sequential):
    """``Sequential(first, Linear(r, out))``: what a factored layer and a factored embedding share."""

    @property
    def out_features(self) -> int:
        return self[1].out_features

    @property
    def rank(self) -> int:
        return self[1].in_features

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


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
        return f"num_embeddings={self.num_embeddings}, embedding_dim={self.embedding_dim}, rank={self.rank}"


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
    """One member of a group: its own ``B`` block applied to the group's shared bottleneck."""

    def __init__(self, shared: SharedBottleneck, out_features: int, bias: bool = True, device=None, dtype=None):
        super().__init__()
        self.B = nn.Linear(shared.rank, out_features, bias=bias, device=device, dtype=dtype)
        object.__setattr__(self, "_shared", shared)  # not a submodule: its weights are saved once, on the parent

    @property
    def in_features(self) -> int:
        return self._shared.in_features

    @property
    def out_features(self) -> int:
        return self.B.out_features

    @property
    def rank(self) -> int:
        return self._shared.rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.B(self._shared(x))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank} (shared A)"


def shared_name(members) -> str:
    """Attribute name of a group's bottleneck on the members' parent: ``lord_shared__q_proj__k_proj__v_proj``."""
    return "lord_shared__" + "__".join(m.rsplit(".", 1)[-1] for m in members)


def set_module(model: nn.Module, name: str, mod: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, mod)


def replace_linear(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` at ``name`` and point every group member that called the old module (a shared ``A``) at it."""
    old = model.get_submodule(name)
    set_module(model, name, new)
    for m in model.modules():
        if isinstance(m, GroupedLowRankLinear) and m._shared is old:
            object.__setattr__(m, "_shared", new)


# ---------------------------------------------------------------------------------------------- quantized layers

HQQ_HINT = "pip install hqq==0.2.8.post1"


@functools.cache
def quantized_linear_class() -> type:
    """``hqq``'s ``HQQLinear`` (packed integer weights, dequantized per forward by its PyTorch backend) that also
    says how many weights it stands for."""
    try:
        from hqq.core.quantize import HQQBackend, HQQLinear
    except ImportError:
        raise ImportError(f"quantized layers need the hqq package: {HQQ_HINT}") from None
    HQQLinear.set_backend(HQQBackend.PYTORCH)

    class QuantizedLinear(HQQLinear):
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
    from hqq.core.quantize import BaseQuantizeConfig

    cls = quantized_linear_class()
    for name, q in quantization["modules"].items():
        layer = cls(None, quant_config=BaseQuantizeConfig(nbits=q["bits"], group_size=q["group_size"]),
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
            model.get_submodule(parent_name).add_module(shared_name(members), shared)
            new[f"{parent_name}.{shared_name(members)}"] = shared
            for m, d_out, b in zip(members, d["d_outs"], d["bias"]):
                new[m] = GroupedLowRankLinear(shared, d_out, bias=b, **kw)
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
        return super().from_dict(config_dict, **kwargs)


_CONFIG_CLASSES: dict[type, type] = {}


def config_class_for(base_model_type: str) -> type:
    """``LordConfig`` on top of the base model's config class (one class per base class)."""
    base = _base_config_class(base_model_type)
    if base not in _CONFIG_CLASSES:
        _CONFIG_CLASSES[base] = type("LordConfig", (LordConfig, base), {"model_type": MODEL_TYPE,
                                                                        "__module__": __name__})
    return _CONFIG_CLASSES[base]


def lord_config(base_config_dict: dict, lord: dict, auto_map: dict | None = None) -> PreTrainedConfig:
    """The config of a compressed model from the dense model's config dict and the ``lord`` entry."""
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
    if name is None:
        archs = [a for a in (getattr(config, "architectures", None) or []) if hasattr(transformers, a)]
        if not archs:
            raise ValueError(f"no causal-LM class for base model type {config.base_model_type!r} in this "
                             "transformers")
        name = archs[0]
    return getattr(transformers, name)


_MODEL_CLASSES: dict[type, type] = {}


def model_class_for(config) -> type:
    """The base model's class with the low-rank structure of ``config.lord`` (one class per base class)."""
    base = _base_model_class(config)
    if base not in _MODEL_CLASSES:
        _MODEL_CLASSES[base] = type(f"Lord{base.__name__}", (_LordMixin, base), {
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

"""Parameter counts of dense and decomposed models, from a config alone (meta device, no weights).

Two conventions for a decomposed layer of rank ``r`` (``d_in -> d_out``):

* ``exact`` (the project's default, what ``LowRankLinear`` holds): ``r (d_in + d_out)`` weights plus
  the original bias ``d_out`` if the layer had one (or the method adds one, ``lord_meanfix``);
* ``paper``: the paper's footnote taken literally, ``nn.Sequential(nn.Linear(in, r), nn.Linear(r, out))``
  with PyTorch defaults, i.e. a bias in *both* factors: ``r (d_in + d_out) + r + d_out``.

Shared tensors (tied embeddings) count once, as ``model.parameters()`` does.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn

from lord.compress import CompressionConfig
from lord.structure import apply_structure, plan
from lord.errors import LordError
from lord.ranks import RankSpec

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
CONVENTIONS = ("exact", "paper")


def paper_model_configs() -> dict[str, Path]:
    """Shipped configs of the paper's models, keyed by hub id (``Salesforce/codegen-16B-mono``...)."""
    return {p.stem.replace("--", "/"): p for p in sorted(MODEL_CONFIG_DIR.glob("*.json"))}


def zoo_model_configs() -> dict[str, Path]:
    """Shipped configs of the offline zoo's converted models (``lord.zoo``), keyed by zoo name."""
    return {p.stem: p for p in sorted((MODEL_CONFIG_DIR / "zoo").glob("*.json"))}


def load_config(name_or_path):
    """A transformers config from a shipped paper model id, a config.json path, or a model directory."""
    from transformers import AutoConfig

    shipped = {**paper_model_configs(), **zoo_model_configs()}
    if str(name_or_path) in shipped:
        d = json.loads(shipped[str(name_or_path)].read_text())
        return AutoConfig.for_model(d.pop("model_type"), **d)
    p = Path(name_or_path)
    if p.is_file():
        d = json.loads(p.read_text())
        return AutoConfig.for_model(d.pop("model_type"), **d)
    if p.is_dir():
        return AutoConfig.from_pretrained(p)
    raise LordError(f"no config for {name_or_path!r}: give a config.json, a model directory, "
                    f"or one of {', '.join(shipped)}")


def with_blocks(config, blocks: int | None):
    """``config`` cut to its first ``blocks`` transformer blocks (unchanged when ``blocks`` is None)."""
    if blocks is not None:
        for key in ("n_layer", "num_hidden_layers"):
            if hasattr(config, key):
                setattr(config, key, blocks)
    return config


def meta_model(config) -> nn.Module:
    """The model of ``config`` on the meta device; a LoRD checkpoint's config gives its low-rank model."""
    from transformers import AutoModelForCausalLM

    from lord.hf.modeling_lord import MODEL_TYPE, model_class_for

    with torch.device("meta"):
        if getattr(config, "model_type", None) == MODEL_TYPE:
            return model_class_for(config)(config)
        return AutoModelForCausalLM.from_config(config)


def count_parameters(model: nn.Module) -> int:
    """Weights and biases, shared tensors once. A module that stores its weights packed (a quantized linear,
    ``lord.quantization``) counts as the dense weights it stands for (its ``dense_parameter_count()``)."""
    total, seen = 0, set()
    for mod in model.modules():
        own = getattr(mod, "dense_parameter_count", None)
        params = list(mod.parameters(recurse=own is not None))
        fresh = [p for p in params if id(p) not in seen]
        seen.update(id(p) for p in params)
        if own is not None:
            total += own() if fresh else 0
        else:
            total += sum(p.numel() for p in fresh)
    return total


def compressed_parameter_count(config, kinds, rank: RankSpec, group: bool = False, method: str = "lord",
                               convention: str = "exact", layers=None) -> dict:
    """Dense and decomposed parameter counts of a model described only by its config."""
    if convention not in CONVENTIONS:
        raise LordError(f"unknown parameter convention {convention!r}; choose from: {', '.join(CONVENTIONS)}")
    model = meta_model(config)
    dense = count_parameters(model)
    cfg = CompressionConfig(method=method, kinds=list(kinds) if not isinstance(kinds, str) else [kinds],
                            rank=rank, group=group, layers=layers)
    decs = [d for _, d in plan(model, cfg)]
    apply_structure(model, decs, device="meta")
    total = count_parameters(model)
    if convention == "paper":
        for d in decs:
            for d_out, has_bias in zip(d.d_outs, d.bias):
                total += d.rank + (0 if has_bias else d_out)
    return {"dense": dense, "compressed": total, "decompositions": decs}

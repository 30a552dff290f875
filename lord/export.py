"""Export a compressed checkpoint as a plain dense one (``W = B·A``, the bias folded in), for tools that need
ordinary ``nn.Linear`` layers and no remote code.

    lord export --merge DIR OUT

The dense architecture is the base model's. Where it has no bias for a layer whose decomposition carries one
(``lord_meanfix`` adds an output bias to every layer; Qwen2's MLP and ``o_proj`` have none), the export goes
to an architecture that can hold it: a Qwen2 or Mistral model without sliding-window attention is exactly a
Llama model with ``attention_bias`` (q/k/v/o; o's bias zero where there was none) and ``mlp_bias``; a Llama
model only needs those flags. Anything else is refused in one line. An added embedding bias is folded into
the table (a lookup plus a constant row), but an LM-head bias cannot be held by any of these heads.
Every export is checked: the dense model's logits on a probe sequence must match the compressed model's. The
folder gets its own model card (``lord.model_card.export_card_text``) and ``lord_export.json`` (what was done;
``source`` is the checkpoint folder's name, not its path).

MLP layers made smaller by neuron selection (``lord.resized``) export when every MLP block keeps the same number of
neurons (the dense config's ``intermediate_size`` becomes it); blocks of different sizes are refused in one line,
since the dense config holds one ``intermediate_size``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from lord.atomic import replaced_directory
from lord.checkpoint import load_compressed, read_structure
from lord.errors import LordError
from lord.hf.modeling_lord import shared_name
from lord.model_card import CARD, EXPORT_REPORT, export_card_text

log = logging.getLogger(__name__)

# relative agreement of the logits required of an export (float32 products B·A reassociate the sums)
LOGIT_RTOL = 1e-4
LLAMA_COMPATIBLE = ("llama", "qwen2", "mistral")


def merged_weights(model, decompositions) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    """``{module name: (W (d_out, d_in) or the embedding table, bias or None)}`` for every decomposed member."""
    out = {}
    with torch.no_grad():
        for d in decompositions:
            members = d["members"]
            if d["kind"] == "embed":
                mod = model.get_submodule(members[0])
                table = mod[0].weight @ mod[1].weight.T  # (vocab, r) @ (r, d)
                if mod[1].bias is not None:
                    table = table + mod[1].bias  # every lookup adds the same row
                out[members[0]] = (table, None)
            elif len(members) == 1:
                mod = model.get_submodule(members[0])
                out[members[0]] = (mod[1].weight @ mod[0].weight, mod[1].bias)
            else:
                parent = members[0].rsplit(".", 1)[0]
                A = model.get_submodule(f"{parent}.{shared_name(members)}").weight
                for m in members:
                    B = model.get_submodule(m).B
                    out[m] = (B.weight @ A, B.bias)
    return out


def _dense_skeleton(config):
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def _bias_homeless(skeleton, decompositions) -> list[str]:
    """Members with an output bias whose dense module has no bias parameter (an embedding's bias folds into
    its table)."""
    return [m for d in decompositions if d["kind"] != "embed" for m, b in zip(d["members"], d["bias"])
            if b and getattr(skeleton.get_submodule(m), "bias", None) is None]


def _as_llama(config_dict: dict, homeless: list[str]):
    from transformers import LlamaConfig

    d = dict(config_dict)
    if d["model_type"] not in LLAMA_COMPATIBLE:
        return None
    if d.get("use_sliding_window") or (d["model_type"] == "mistral" and d.get("sliding_window")):
        return None
    if any(n == "lm_head" or n.endswith("embed_tokens") for n in homeless):
        return None
    needs_attn = any(".self_attn." in n for n in homeless) or d["model_type"] == "qwen2"  # Qwen2 q/k/v have biases
    needs_mlp = any(".mlp." in n for n in homeless) or bool(d.get("mlp_bias"))
    keep = {k: d[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                              "num_attention_heads", "num_key_value_heads", "hidden_act", "max_position_embeddings",
                              "rms_norm_eps", "rope_parameters", "tie_word_embeddings", "bos_token_id",
                              "eos_token_id", "pad_token_id", "head_dim", "initializer_range") if d.get(k) is not None}
    keep.setdefault("head_dim", d["hidden_size"] // d["num_attention_heads"])
    return LlamaConfig(**keep, attention_bias=bool(needs_attn or d.get("attention_bias")), mlp_bias=needs_mlp)


def _kept_intermediate_size(path, config, resized: dict) -> int | None:
    """The one ``intermediate_size`` every resized MLP layer implies (None when nothing is resized); else one line."""
    if not resized:
        return None
    skeleton = _dense_skeleton(config)
    sizes = set()
    for name, (d_in, d_out, _) in resized.items():
        ref = skeleton.get_submodule(name)
        sizes |= {d_in} if d_in != ref.in_features else set()
        sizes |= {d_out} if d_out != ref.out_features else set()
    if len(sizes) != 1 or getattr(config, "intermediate_size", None) is None:
        raise LordError(f"cannot export {path} as a dense model: neuron selection left MLP layers of "
                        f"{len(sizes)} different intermediate sizes ({', '.join(map(str, sorted(sizes)))}), and the "
                        "dense config holds one intermediate_size; keep the lord checkpoint (trust_remote_code)")
    return sizes.pop()


def _check_sizes(path, state: dict, skeleton, architecture: str) -> None:
    """Every tensor of the merged state has the dense architecture's shape (MLP blocks of unequal sizes do not)."""
    for k, v in skeleton.state_dict().items():
        if k in state and tuple(state[k].shape) != tuple(v.shape):
            raise LordError(f"cannot export {path} as a dense {architecture} model: {k} has shape "
                            f"{tuple(state[k].shape)} where its config implies {tuple(v.shape)} (MLP blocks that keep "
                            "different numbers of neurons); keep the lord checkpoint (trust_remote_code)")


def _factor_modules(decompositions) -> list[str]:
    """Modules of the compressed model that hold factors: each member, and each group's shared bottleneck."""
    return [m for d in decompositions for m in d["members"]] + [
        f"{d['members'][0].rsplit('.', 1)[0]}.{shared_name(d['members'])}" for d in decompositions
        if len(d["members"]) > 1]


def _dense_state(model, skeleton, merged, factor_modules: list[str]) -> dict[str, torch.Tensor]:
    """The compressed model's state with every decomposed member merged, in the dense model's key layout;
    biases the dense architecture has and the compressed model lacks are zero."""
    state = {}
    factor_prefixes = tuple(n + "." for n in factor_modules)
    for k, v in model.state_dict().items():
        if not k.startswith(factor_prefixes):
            state[k] = v
    for name, (W, b) in merged.items():
        mod = skeleton.get_submodule(name)
        conv1d = type(mod).__name__ == "Conv1D"
        state[f"{name}.weight"] = (W.T if conv1d else W).contiguous()
        if getattr(mod, "bias", None) is not None:
            state[f"{name}.bias"] = b if b is not None else torch.zeros(mod.bias.shape, dtype=W.dtype)
    for k, v in skeleton.state_dict().items():
        if k not in state and k.endswith(".bias"):
            state[k] = torch.zeros(v.shape, dtype=next(iter(merged.values()))[0].dtype)
    return state


def export_merged(path, out, probe_len: int = 32) -> dict:
    """Write the dense equivalent of the checkpoint at ``path`` to ``out`` (atomically); returns what it did."""
    from transformers import AutoConfig, AutoModelForCausalLM

    path, out = Path(path), Path(out)
    base, lord, _ = read_structure(path)
    if lord.get("quantization"):
        raise LordError(f"cannot export {path} as a dense model: its layers are HQQ-quantized, and merging would "
                        "store every weight in float again; export the checkpoint saved before the quantize stage")
    decompositions = lord["decompositions"]
    config = AutoConfig.for_model(base["model_type"], **{k: v for k, v in base.items()
                                                         if k not in ("model_type", "transformers_version")})
    kept = _kept_intermediate_size(path, config, lord.get("resized"))
    if kept is not None:
        config.intermediate_size = kept
    skeleton = _dense_skeleton(config)
    homeless = _bias_homeless(skeleton, decompositions)
    architecture = base["model_type"]
    if homeless:
        config = _as_llama(base, homeless)
        if config is None:
            raise LordError(
                f"cannot export {path} as a dense {base['model_type']} model: {homeless[0]} (and "
                f"{len(homeless) - 1} more) carry an output bias its architecture has no place for, and no "
                "bias-capable equivalent is known for it; keep the lord checkpoint (trust_remote_code) or "
                "compress with a method that adds no bias (lord, whiten, svd)")
        architecture = "llama"
        if kept is not None:
            config.intermediate_size = kept
        skeleton = _dense_skeleton(config)
    model, tok = load_compressed(path)
    merged = merged_weights(model, decompositions)
    state = _dense_state(model, skeleton, merged, _factor_modules(decompositions))
    _check_sizes(path, state, skeleton, architecture)
    dense = AutoModelForCausalLM.from_config(config, dtype=next(model.parameters()).dtype)
    missing, unexpected = dense.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (getattr(config, "tie_word_embeddings", False) and k.startswith("lm_head"))]
    if missing or unexpected:
        raise LordError(f"export of {path}: the merged weights do not fit {architecture} (missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]}); please report this with the checkpoint's config.json")
    if getattr(config, "tie_word_embeddings", False):
        dense.tie_weights()
    dense.eval()
    probe = torch.arange(probe_len).remainder(config.vocab_size).unsqueeze(0)
    with torch.no_grad():
        want, got = model(probe).logits, dense(probe).logits
    err = float((want - got).abs().max() / want.abs().max().clamp_min(1e-12))
    if not err <= LOGIT_RTOL:
        raise LordError(f"export of {path}: the dense model's logits differ from the compressed model's by "
                        f"{err:.2e} of their scale (allowed {LOGIT_RTOL:g}); nothing was written")
    with replaced_directory(out) as tmp:
        dense.save_pretrained(tmp)
        if tok is not None:
            tok.save_pretrained(tmp)
        report = {"source": path.name, "architecture": architecture, "base_model_type": base["model_type"],
                  "merged_targets": len(decompositions), "probe_tokens": probe_len,
                  "max_logit_error_relative": err,
                  "n_params": sum(p.numel() for p in dense.parameters())}
        (tmp / EXPORT_REPORT).write_text(json.dumps(report, indent=2))
        (tmp / CARD).write_text(export_card_text(path, report))
    log.info("exported %s -> %s (%s, logits within %.1e)", path, out, architecture, err)
    return report

"""Where each canonical layer kind lives in each supported architecture.

Layer kinds are the paper's axis (§3.1, Fig. 2): ``attn_qkv``, ``attn_out``, ``mlp_up``, ``mlp_gate``,
``mlp_down``; ``all`` means every one of those the architecture has. ``embed`` and ``lm_head`` are
never part of ``all`` and are decomposed only when asked for by name.

A mapping names, relative to one transformer block, the module(s) of each kind, and the groups of
modules that read the same input and may therefore share one bottleneck (§3.1, layer grouping).
Users add an architecture without touching code by passing the same structure as a dict: the top-level config key
``architecture`` (``python -m experiments.run architecture='{blocks: ..., kinds: {...}}' ...``; docs: add-a-model),
or ``CompressionConfig(architecture=...)`` / ``Compressor(..., architecture=...)`` in Python.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch.nn as nn

from lord.errors import LordError

BLOCK_KINDS = ("attn_qkv", "attn_out", "mlp_up", "mlp_gate", "mlp_down")
EXTRA_KINDS = ("embed", "lm_head")
ALL_KINDS = BLOCK_KINDS + EXTRA_KINDS


@dataclass(frozen=True)
class Architecture:
    """Module names of each layer kind, relative to a block under ``blocks``."""

    blocks: str
    kinds: dict[str, tuple[str, ...]]
    groups: tuple[tuple[str, ...], ...] = ()
    embed: str | None = None
    lm_head: str | None = "lm_head"

    @classmethod
    def from_dict(cls, d: dict) -> "Architecture":
        try:
            return cls(
                blocks=str(d["blocks"]),
                kinds={k: tuple(v) for k, v in dict(d["kinds"]).items()},
                groups=tuple(tuple(g) for g in d.get("groups", ())),
                embed=d.get("embed"),
                lm_head=d.get("lm_head", "lm_head"),
            )
        except (KeyError, TypeError) as e:
            raise LordError(
                f"architecture mapping is malformed ({e!r}): it needs 'blocks' (e.g. 'model.layers') and "
                "'kinds' (e.g. {mlp_down: [mlp.down_proj]}), optionally 'groups', 'embed', 'lm_head'"
            ) from None


def _mapping(blocks: str, embed: str, qkv: tuple[str, ...], out: str, up: str, down: str,
             gate: str | None = None) -> Architecture:
    """A block of attention (q/k/v fused or separate, grouped when separate) and an MLP (SwiGLU when ``gate``,
    whose gate and up projections form a group)."""
    kinds = {"attn_qkv": qkv, "attn_out": (out,), "mlp_up": (up,), "mlp_down": (down,)}
    if gate is not None:
        kinds["mlp_gate"] = (gate,)
    groups = ((qkv,) if len(qkv) > 1 else ()) + (((gate, up),) if gate is not None else ())
    return Architecture(blocks=blocks, kinds=kinds, groups=groups, embed=embed)


_QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
_LLAMA = _mapping("model.layers", "model.embed_tokens", _QKV, "self_attn.o_proj", "mlp.up_proj", "mlp.down_proj",
                  gate="mlp.gate_proj")
_GPT2_NAMES = _mapping("transformer.h", "transformer.wte", ("attn.c_attn",), "attn.c_proj", "mlp.c_fc", "mlp.c_proj")

ARCHITECTURES: dict[str, Architecture] = {
    "llama": _LLAMA,
    "qwen2": _LLAMA,
    "mistral": _LLAMA,
    "starcoder2": _mapping("model.layers", "model.embed_tokens", _QKV, "self_attn.o_proj", "mlp.c_fc", "mlp.c_proj"),
    "gpt_bigcode": _GPT2_NAMES,
    "gpt2": _GPT2_NAMES,
    "codegen": _mapping("transformer.h", "transformer.wte", ("attn.qkv_proj",), "attn.out_proj", "mlp.fc_in",
                        "mlp.fc_out"),
}


@dataclass(frozen=True)
class Target:
    """One decomposition: a single module, or a group of modules sharing one bottleneck ``A``."""

    members: tuple[str, ...]  # full module names; more than one for a group
    kind: str  # canonical kind ("attn_qkv", "mlp_gate+mlp_up" for a gate/up group, ...)
    block: int | None  # transformer block index, None for embed / lm_head
    input_key: str = ""  # targets with equal keys read the same input tensor (q/k/v; gate/up)

    @property
    def name(self) -> str:
        return self.members[0] if len(self.members) == 1 else "+".join(self.members)


def linear_module_names(model: nn.Module) -> list[str]:
    """Names of every linear-like module, with block indices collapsed to ``{i}`` (for error messages)."""
    seen: dict[str, None] = {}
    for name, mod in model.named_modules():
        if _is_linear_like(mod):
            seen[re.sub(r"\.\d+\.", ".{i}.", name)] = None
    return list(seen)


def block_linears(block: nn.Module) -> dict[str, nn.Linear]:
    """Every ``nn.Linear`` of a block, by its name in the block (a shared module once): what the prune, quantize and
    lora stages act on."""
    return {name: mod for name, mod in block.named_modules() if isinstance(mod, nn.Linear)}


def _is_linear_like(mod: nn.Module) -> bool:
    return isinstance(mod, nn.Linear) or type(mod).__name__ == "Conv1D"


def architecture_for(model: nn.Module, override: dict | Architecture | None = None) -> Architecture:
    if isinstance(override, Architecture):
        return override
    if override:
        return Architecture.from_dict(dict(override))
    config = getattr(model, "config", None)
    # a loaded LoRD checkpoint has model_type "lord" and keeps its architecture in base_model_type
    model_type = getattr(config, "base_model_type", None) or getattr(config, "model_type", None)
    if model_type in ARCHITECTURES:
        return ARCHITECTURES[model_type]
    linears = linear_module_names(model)
    prefixes = sorted({n.split(".{i}.")[0] for n in linears if ".{i}." in n})
    blocks = prefixes[0] if len(prefixes) == 1 else "<blocks path>"
    raise LordError(
        f"no layer-kind mapping for architecture {model_type!r} (known: {', '.join(sorted(ARCHITECTURES))}); "
        f"its linear modules are [{', '.join(linears[:12])}]; map it with the config key architecture, e.g. "
        f"architecture='{{blocks: {blocks}, kinds: {{mlp_down: [<name relative to a block>], ...}}}}' "
        "(in Python: CompressionConfig(architecture={...}))"
    )


def expand_kinds(kinds, arch: Architecture) -> list[str]:
    if isinstance(kinds, str):
        kinds = [kinds]
    out: list[str] = []
    for k in kinds:
        if k == "all":
            out += [b for b in BLOCK_KINDS if b in arch.kinds]
        elif k in arch.kinds or (k == "embed" and arch.embed) or (k == "lm_head" and arch.lm_head):
            out.append(k)
        elif k in ALL_KINDS:
            raise LordError(
                f"layer kind {k!r} does not exist in this architecture; it has: "
                f"{', '.join(list(arch.kinds) + ['all'] + [e for e in EXTRA_KINDS if getattr(arch, e)])}"
            )
        else:
            raise LordError(f"unknown layer kind {k!r}; choose from: {', '.join(ALL_KINDS + ('all',))}")
    return list(dict.fromkeys(out))


def block_label(indices) -> str:
    """A short name for a set of block indices: "" for every block (None), else e.g. "blocks0-2+7"."""
    if indices is None:
        return ""
    runs, ordered = [], sorted({int(i) for i in indices})
    for i in ordered:
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return "blocks" + "+".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs)


def select_targets(
    model: nn.Module,
    kinds,
    group: bool = False,
    layer_indices=None,
    architecture: dict | Architecture | None = None,
) -> list[Target]:
    """Resolve layer kinds to concrete targets, failing before any work if something is off."""
    arch = architecture_for(model, architecture)
    kinds = expand_kinds(kinds, arch)
    if not kinds:
        raise LordError("no layer kinds selected; pass e.g. kinds=[mlp_down] or kinds=[all]")
    modules = dict(model.named_modules())
    blocks = modules.get(arch.blocks)
    if blocks is None:
        raise LordError(
            f"blocks path {arch.blocks!r} not found in the model; its linear modules are "
            f"[{', '.join(linear_module_names(model)[:12])}]; fix 'blocks' in the architecture mapping"
        )
    n_blocks = len(blocks)
    if layer_indices is None:
        indices = list(range(n_blocks))
    else:
        indices = sorted({int(i) for i in layer_indices})
        bad = [i for i in indices if not 0 <= i < n_blocks]
        if bad:
            raise LordError(f"layer indices {bad} out of range: the model has blocks 0..{n_blocks - 1}")

    rel_kind = {rel: k for k in kinds if k in arch.kinds for rel in arch.kinds[k]}
    targets: list[Target] = []
    shared_input = {rel: "|".join(g) for g in arch.groups for rel in g}
    if "embed" in kinds:
        targets.append(Target((arch.embed,), "embed", None, arch.embed))
    for i in indices:
        prefix = f"{arch.blocks}.{i}."
        grouped: set[str] = set()
        if group:
            for g in arch.groups:
                if all(rel in rel_kind for rel in g):
                    members = tuple(prefix + rel for rel in g)
                    gkinds = list(dict.fromkeys(rel_kind[rel] for rel in g))
                    targets.append(Target(members, "+".join(gkinds), i, prefix + shared_input[g[0]]))
                    grouped.update(g)
        for rel, k in rel_kind.items():
            if rel not in grouped:
                targets.append(Target((prefix + rel,), k, i, prefix + shared_input.get(rel, rel)))
    if "lm_head" in kinds:
        targets.append(Target((arch.lm_head,), "lm_head", None, arch.lm_head))

    for t in targets:
        for m in t.members:
            mod = modules.get(m)
            ok = isinstance(mod, nn.Embedding) if t.kind == "embed" else (mod is not None and _is_linear_like(mod))
            if not ok:
                raise LordError(
                    f"module {m!r} (kind {t.kind}) is missing or not a linear layer; the model's linear modules "
                    f"are [{', '.join(linear_module_names(model)[:12])}]; fix the architecture mapping in config"
                )
    if not targets:
        raise LordError("the selection matched no module: check kinds and layer indices")
    # keep module order as in the model's forward (block order, then declaration order)
    order = {n: j for j, n in enumerate(modules)}
    targets.sort(key=lambda t: order[t.members[0]])
    return targets

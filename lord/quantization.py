"""Weight-only quantization of every linear inside the transformer blocks with HQQ (stage ``quantize``).

HQQ (Badri & Shaji, 2023, "Half-Quadratic Quantization of Large Machine Learning Models"; package ``hqq``)
quantizes each group of ``group_size`` consecutive weights of a row to ``bits`` bits with its own scale and zero
point, found by a half-quadratic solver that minimises the group's ``l_p`` (p < 1) reconstruction error; no
calibration data. Why this library and not the paper's SpQR or a GPTQ package: docs/findings/table2.md, "Why HQQ"
(what installs with the pinned torch/transformers and runs on a CPU).

Every ``nn.Linear`` of the blocks becomes an ``HQQLinear`` holding packed integer weights (a dense model's
projections, a LoRD model's factors ``A`` and ``B``; a group's shared ``A`` is quantized once and its members
are pointed at the quantized module). Embeddings and the LM head stay in the model's dtype, as SpQR/GPTQ leave
them. ``HQQLinear`` dequantizes its weight for each forward (the ``PYTORCH`` backend): quantization here saves
memory, not time.
"""

from __future__ import annotations

import os
import tempfile

import torch
import torch.nn as nn

from lord.architectures import architecture_for, block_linears
from lord.errors import LordError
from lord.hf.modeling_lord import quantized_linear_class, replace_linear
from lord.progress import progress_bar

BITS = (2, 3, 4, 8)


def check_settings(bits, group_size) -> None:
    if isinstance(bits, bool) or bits not in BITS:
        raise LordError(f"quantize.bits={bits!r} is not supported; allowed: {', '.join(map(str, BITS))}")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 8 or group_size % 8:
        raise LordError(f"quantize.group_size={group_size!r} must be a multiple of 8 (weights per scale and zero "
                        "point; 64 is HQQ's usual choice)")


def check_divisible(model: nn.Module, group_size: int, architecture=None, skip=frozenset()) -> None:
    """Every block linear's weight count is a whole number of groups (HQQ groups the flattened weight); ``skip``:
    full names of linears not to check (layers that a decomposition will replace)."""
    arch = architecture_for(model, architecture)
    for i, block in enumerate(model.get_submodule(arch.blocks)):
        for name, mod in block_linears(block).items():
            if f"{arch.blocks}.{i}.{name}" not in skip and mod.weight.numel() % group_size:
                raise LordError(f"quantize.group_size={group_size}: block {i}'s {name} has {mod.weight.numel()} "
                                "weights, not a whole number of groups; choose a group size that divides it")


def quantize_model(model: nn.Module, bits: int, group_size: int, architecture=None, progress: bool = True) -> dict:
    """Replace every block linear by its HQQ-quantized version in place; returns a record (module docstring)."""
    from hqq.core.quantize import BaseQuantizeConfig

    check_settings(bits, group_size)
    check_divisible(model, group_size, architecture)  # before any layer is replaced: no half-quantized model
    QuantizedLinear = quantized_linear_class()
    arch = architecture_for(model, architecture)
    blocks = model.get_submodule(arch.blocks)
    config = BaseQuantizeConfig(nbits=bits, group_size=group_size)
    errors, weights, bytes_before, bytes_after = [], 0, 0, 0
    for i in progress_bar(range(len(blocks)), desc="quantize", unit="block", disable=not progress):
        block = blocks[i]
        for name, mod in block_linears(block).items():
            W = mod.weight.detach().clone()
            bytes_before += tensor_bytes(mod)
            q = QuantizedLinear(mod, quant_config=config, compute_dtype=W.dtype, device=str(W.device), del_orig=True)
            with torch.no_grad():
                err = float((q.dequantize().to(W.dtype) - W).norm() / W.norm()) if W.norm() > 0 else 0.0
            replace_linear(block, name, q)  # a group's members call their shared A directly: pointed at q too
            errors.append({"name": f"{arch.blocks}.{i}.{name}", "shape": list(W.shape), "relative_error": err})
            weights += W.numel()
            bytes_after += tensor_bytes(q)
    return {"backend": "hqq", "bits": bits, "group_size": group_size, "layers": errors, "quantized_weights": weights,
            "linear_bytes_before": bytes_before, "linear_bytes_after": bytes_after}


def tensor_bytes(module: nn.Module) -> int:
    """Bytes of every tensor in ``module``'s state dict (each storage once): what it holds in memory."""
    seen, total = set(), 0
    for t in module.state_dict(keep_vars=True).values():
        if isinstance(t, torch.Tensor) and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def serialized_bytes(module: nn.Module) -> int:
    """Bytes of ``torch.save(module.state_dict())``: what the model takes on disk."""
    with tempfile.TemporaryDirectory() as d:  # a file, not memory: a float model's state dict is gigabytes
        path = os.path.join(d, "state_dict.pt")
        torch.save(module.state_dict(), path)
        return os.path.getsize(path)

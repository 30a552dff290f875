"""The quantization step of every weight of a GGUF file, mapped onto the Hugging Face model converted from it.

In GGUF's block formats a weight is an affine function of its integer code within its block or sub-block:
``w = Δ·q + c`` (``Δ`` = ``d`` for Q4_0/Q4_1/Q5_0/Q5_1/Q8_0, ``d·sc`` for Q4_K/Q5_K/Q6_K's sub-blocks). The step
``Δ`` is read without re-deriving any format: each block is dequantized by gguf's own code twice, once with every
code set to its lowest value and once to the next one (the scales and offsets untouched), and the difference is
``Δ`` for each weight. Unquantized tensors (F32, F16, BF16) have no step.

``gguf_steps`` maps those steps onto the converted model's parameter names with transformers' own GGUF name map
and tensor processors (Llama's q/k row permutation included), and checks that the GGUF's dequantized values equal
the model's parameters, so a step can never land on the wrong weight.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lord.errors import LordError

# per format: the byte ranges of one block that hold the integer codes, with the byte that encodes "one step
# above the lowest code" in each (0x11: both 4-bit nibbles = 1; high-bit planes stay 0)
CODE_BYTES = {
    "Q4_0": [(2, 18, 0x11)],
    "Q4_1": [(4, 20, 0x11)],
    "Q5_0": [(2, 6, 0x00), (6, 22, 0x11)],
    "Q5_1": [(4, 8, 0x00), (8, 24, 0x11)],
    "Q8_0": [(2, 34, 0x01)],
    "Q4_K": [(16, 144, 0x11)],
    "Q5_K": [(16, 48, 0x00), (48, 176, 0x11)],
    "Q6_K": [(0, 128, 0x11), (128, 192, 0x00)],
}
UNQUANTIZED = ("F32", "F16", "BF16", "F64")


def quant_step(data: np.ndarray, qtype) -> np.ndarray | None:
    """|Δ| of every weight of one GGUF tensor (raw block bytes as gguf's reader gives them), shaped like its
    dequantized values; None for an unquantized tensor."""
    from gguf import GGML_QUANT_SIZES, dequantize

    name = qtype.name
    if name in UNQUANTIZED:
        return None
    if name not in CODE_BYTES:
        raise LordError(f"GGUF tensor format {name} has no known code layout; supported: "
                        f"{', '.join(CODE_BYTES)} (and unquantized {', '.join(UNQUANTIZED)})")
    _, type_size = GGML_QUANT_SIZES[qtype]
    lowest, next_ = data.copy(), data.copy()
    for arr, use_next in ((lowest, False), (next_, True)):
        blocks = arr.reshape(-1, type_size)
        for start, end, one in CODE_BYTES[name]:
            blocks[:, start:end] = one if use_next else 0
    return np.abs(dequantize(next_, qtype) - dequantize(lowest, qtype))


def gguf_steps(gguf_path: str | Path, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """{parameter name: Δ (float32, the parameter's shape)} for every quantized GGUF tensor that the model holds,
    after checking that the GGUF's dequantized values are the model's parameters."""
    from gguf import GGUFReader, dequantize
    from transformers.modeling_gguf_pytorch_utils import (TENSOR_PROCESSORS, TensorProcessor,
                                                          get_gguf_hf_weights_map, load_gguf_checkpoint)

    reader = GGUFReader(str(gguf_path))
    arch = reader.fields["general.architecture"]
    arch = bytes(arch.parts[arch.data[0]]).decode()
    config = load_gguf_checkpoint(str(gguf_path), return_tensors=False).get("config", {})
    processor = TENSOR_PROCESSORS.get(arch, TensorProcessor)(config=config)
    names = get_gguf_hf_weights_map(model, processor)
    params = dict(model.named_parameters(remove_duplicate=False))
    steps = {}
    for t in reader.tensors:
        step = quant_step(t.data, t.tensor_type)
        if step is None:
            continue
        values = processor.process(weights=dequantize(t.data, t.tensor_type), name=t.name,
                                   tensor_key_mapping=names, parsed_parameters={"tensors": {}})
        step = processor.process(weights=step, name=t.name, tensor_key_mapping=names,
                                 parsed_parameters={"tensors": {}})
        hf = names.get(step.name)
        if hf is None or hf not in params:
            continue
        p = params[hf].detach().float().cpu()
        v = torch.from_numpy(np.ascontiguousarray(values.weights, dtype=np.float32)).reshape(p.shape)
        if not torch.equal(v, p):
            raise LordError(f"GGUF tensor {t.name} does not hold the model's {hf} (max difference "
                            f"{float((v - p).abs().max()):.3g}); quant steps need the model converted from this GGUF")
        steps[hf] = torch.from_numpy(np.ascontiguousarray(step.weights, dtype=np.float32)).reshape(p.shape)
    if not steps:
        raise LordError(f"no quantized tensor of {gguf_path} maps onto the model's parameters")
    return steps

"""The modules a decomposed layer becomes.

``LowRankLinear`` is literally the paper's one-line change (§3.3, footnote 1):
``nn.Linear(in, out) -> nn.Sequential(nn.Linear(in, rank), nn.Linear(rank, out))``, except that the
first factor carries no bias (it would be redundant). Its state-dict keys are ``<name>.0.weight``,
``<name>.1.weight`` and ``<name>.1.bias``, so anyone can rebuild it without this package.

A *group* (q/k/v, or SwiGLU gate/up, §3.1) shares one bottleneck ``A``: a ``SharedBottleneck``
registered once on the members' parent module, and one ``GroupedLowRankLinear`` per member that
applies its own ``B`` block. The bottleneck remembers its last input, so q, k and v reading the
same tensor compute ``A x`` once.

The classes live in ``lord/hf/modeling_lord.py``, the self-contained file saved next to every checkpoint, so
a checkpoint loaded with ``trust_remote_code`` runs exactly this code.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from lord.hf.modeling_lord import (GroupedLowRankLinear, LowRankEmbedding, LowRankLinear, SharedBottleneck,
                                   shared_name)

__all__ = ["GroupedLowRankLinear", "LowRankEmbedding", "LowRankLinear", "SharedBottleneck", "dense_weight",
           "shared_name"]


def dense_weight(mod: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(W, b) of a linear-like module with W shaped (d_out, d_in), whatever the storage convention."""
    if isinstance(mod, nn.Embedding):  # a lookup is a linear map of one-hot inputs: W = E^T
        return mod.weight.T, None
    if type(mod).__name__ == "Conv1D":  # GPT-2 stores weights as (d_in, d_out)
        return mod.weight.T, mod.bias
    return mod.weight, mod.bias

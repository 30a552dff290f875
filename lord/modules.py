"""The modules a decomposed layer becomes.

``LowRankLinear`` is literally the paper's one-line change (§3.3, footnote 1):
``nn.Linear(in, out) -> nn.Sequential(nn.Linear(in, rank), nn.Linear(rank, out))``, except that the
first factor carries no bias (it would be redundant). Its state-dict keys are ``<name>.0.weight``,
``<name>.1.weight`` and ``<name>.1.bias``, so anyone can rebuild it without this package.

A *group* (q/k/v, or SwiGLU gate/up, §3.1) shares one bottleneck ``A``: a ``SharedBottleneck``
registered once on the members' parent module, and one ``GroupedLowRankLinear`` per member that
applies its own ``B`` block. The bottleneck remembers its last input, so q, k and v reading the
same tensor compute ``A x`` once.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn as nn


def dense_weight(mod: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(W, b) of a linear-like module with W shaped (d_out, d_in), whatever the storage convention."""
    if isinstance(mod, nn.Embedding):  # a lookup is a linear map of one-hot inputs: W = E^T
        return mod.weight.T, None
    if type(mod).__name__ == "Conv1D":  # GPT-2 stores weights as (d_in, d_out)
        return mod.weight.T, mod.bias
    return mod.weight, mod.bias


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


def shared_name(members: list[str] | tuple[str, ...]) -> str:
    """Attribute name of a group's bottleneck on the members' parent: ``lord_shared__q_proj__k_proj__v_proj``."""
    return "lord_shared__" + "__".join(m.rsplit(".", 1)[-1] for m in members)

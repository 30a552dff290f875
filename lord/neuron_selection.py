"""Neuron selection on a model (config ``neurons``): which MLP blocks, their statistics, each block's neuron order and
cost curve, its allocation candidate, and the smaller layers' weights (the formulas: ``lord.neurons``).

A ``Compressor`` made with ``neurons=NeuronSettings(...)`` owns one ``NeuronSelection``: the MLP layers of the
selected blocks (gate, up and down, which must all be selected) leave its low-rank targets and become one
allocation candidate per block whose "rank" is the number of neurons kept. A neuron costs ``3 d_model`` parameters
(its row of gate and up, its column of down; plus one per gate/up bias), so at ``rank.unit=budget`` neurons and
ranks share one budget and any allocation criterion chooses both.

Statistics: ``C`` of a block is ``d_ff x d_ff`` (Qwen2.5-0.5B: 4,864^2, 190 MB in float64; 1.5B: 8,960^2, 640 MB),
too large to hold for every block at once, so they are gathered block by block: the dense inputs of the first block
are kept for every calibration window and run through one block at a time (one forward pass of the blocks in all),
each block's accumulator is summarised (its neuron order and cost curve) and written to the cache
(``<cache>/stats``, keyed by model, windows, ``skip_first`` and the block) -- so only one ``C`` is in memory at a
time, and later runs read them instead. Without a cache they stay in memory. A block whose down_proj has a bias
fits the centred covariance ``E[h h^T] - mu mu^T``, which loses what float32 sums of ``h h^T`` resolve when the mean
dominates, so its products are formed in float64 (``Float64Moments``); bias-free blocks (Qwen2, Llama) use the
second moment itself, whose float32 chunk products are as precise as every other statistic's, and whose sums are
rounded to float32 -- used so whether or not they were cached, and stored so: half the disk (Qwen2.5-0.5B: 2.3 GB for
all 24 blocks; 1.5B: 9 GB), a relative change of 6e-8, far below the float32 products' own error.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn as nn

from lord.allocation import Candidate
from lord.architectures import Architecture, architecture_for, expand_kinds
from lord.calibration import Moments, StatSlot, advance_inputs, block_inputs, register_stat_hooks
from lord.errors import LordError
from lord.modules import dense_weight
from lord.neurons import (fit_statistics, kept_neurons, leverage_scores, neuron_order, refit_bias, refit_down,
                          residual_spectrum)
from lord.progress import progress_bar

MLP_KINDS = ("mlp_gate", "mlp_up", "mlp_down")
KIND = "mlp_neurons"  # the allocation candidates' kind


class Float64Moments(Moments):
    """``Moments`` whose chunk products are formed in float64 (the same sums, stored and cached alike)."""

    def update(self, v: torch.Tensor) -> None:
        v = v.detach().reshape(-1, self.dim)
        for chunk in v.split(1024):
            c = chunk.to(device=self.sum_vv.device, dtype=torch.float64)
            self.sum_vv += c.T @ c
            self.sum_v += c.sum(0)
        self.n += v.shape[0]


def _defaults() -> dict:
    from lord.identity import ADDED_KEYS

    return dict(ADDED_KEYS["neurons"])


@dataclass(frozen=True)
class NeuronSettings:
    """``ridge``: ``lam`` of the leverage scores; ``refit_ridge``: ``lam'`` of the refit of ``down_proj``; both
    relative to the mean eigenvalue ``tr(C) / d_ff`` (``lord.neurons``)."""

    ridge: float = 0.01
    refit_ridge: float = 0.001

    def __post_init__(self):
        for key in ("ridge", "refit_ridge"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not v > 0:
                raise LordError(f"neurons.{key}={v!r} must be a number > 0 (relative to the mean eigenvalue of the "
                                "MLP activations' second moment), e.g. 0.01")

    @classmethod
    def from_config(cls, node) -> "NeuronSettings | None":
        """The settings of config ``neurons`` (None when ``enabled`` is false), checked in one line."""
        defaults = _defaults()
        given = dict(node or {})
        unknown = sorted(set(given) - set(defaults))
        if unknown:
            raise LordError(f"neurons has unknown key(s) {unknown}; allowed: {', '.join(defaults)}")
        s = {**defaults, **given}
        if not isinstance(s["enabled"], bool):
            raise LordError(f"neurons.enabled={s['enabled']!r} must be true or false")
        return cls(ridge=s["ridge"], refit_ridge=s["refit_ridge"]) if s["enabled"] else None


@dataclass(frozen=True)
class MlpBlock:
    """One MLP block's layers and sizes."""

    name: str  # the module holding its layers (down_proj's parent): the allocation candidate's name
    block: int
    inputs: tuple[str, ...]  # the layers whose output rows are neurons: (gate_proj, up_proj), or (up_proj,)
    down: str
    d_model: int
    d_ff: int
    input_bias: tuple[bool, ...]
    down_bias: bool

    @property
    def modules(self) -> tuple[str, ...]:
        return self.inputs + (self.down,)

    @property
    def per_neuron(self) -> int:
        """Parameters of one neuron: its row (and bias) of each input layer, its column of down_proj."""
        return (len(self.inputs) + 1) * self.d_model + sum(self.input_bias)

    @property
    def bias_params(self) -> int:
        return self.d_model if self.down_bias else 0

    @property
    def dense_params(self) -> int:
        return self.d_ff * self.per_neuron + self.bias_params

    def kept_params(self, k: int) -> int:
        return k * self.per_neuron + self.bias_params


def mlp_blocks(model: nn.Module, arch: Architecture, kinds, layers=None) -> list[MlpBlock]:
    """The MLP blocks of the selection, checked: every MLP kind of the architecture selected, plain ``nn.Linear``
    layers of consistent sizes. One line for anything else (a weightless model is enough)."""
    selected = expand_kinds(kinds, arch)
    mlp = [k for k in MLP_KINDS if k in arch.kinds]
    if "mlp_up" not in mlp or "mlp_down" not in mlp:
        raise LordError("neuron selection needs an MLP with up and down layers in the architecture mapping")
    missing = [k for k in mlp if k not in selected]
    if missing:
        raise LordError(f"neurons.enabled=true removes whole neurons from {', '.join(mlp)} together, but the layer "
                        f"selection lacks {', '.join(missing)}; select them all (layers=all, or layers.kinds "
                        f"with {', '.join(mlp)})")
    if len(arch.kinds["mlp_down"]) != 1 or len(arch.kinds["mlp_up"]) != 1:
        raise LordError("neuron selection needs one up and one down layer per block in the architecture mapping")
    n_blocks = len(model.get_submodule(arch.blocks))
    indices = range(n_blocks) if layers is None else sorted({int(i) for i in layers})
    blocks = []
    for i in indices:
        prefix = f"{arch.blocks}.{i}."
        inputs = tuple(prefix + rel for k in ("mlp_gate", "mlp_up") for rel in arch.kinds.get(k, ()))
        down = prefix + arch.kinds["mlp_down"][0]
        mods = {n: model.get_submodule(n) for n in inputs + (down,)}
        for n, m in mods.items():
            if type(m) is not nn.Linear:
                raise LordError(f"neuron selection resizes plain nn.Linear layers; {n} is a {type(m).__name__} "
                                "(run it on the dense model, without another change to its MLP before it)")
        d_model, d_ff = mods[down].out_features, mods[down].in_features
        bad = [n for n in inputs if (mods[n].in_features, mods[n].out_features) != (d_model, d_ff)]
        if bad:
            raise LordError(f"{bad[0]} maps {mods[bad[0]].in_features} -> {mods[bad[0]].out_features} features but "
                            f"{down} reads {d_ff}; neuron selection needs the MLP's intermediate sizes to agree")
        blocks.append(MlpBlock(down.rsplit(".", 1)[0], i, inputs, down, d_model, d_ff,
                               tuple(mods[n].bias is not None for n in inputs), mods[down].bias is not None))
    return blocks


class NeuronSelection:
    """The neuron selection of one ``Compressor`` (``compressor``: its model, calibration batches, cache, and the
    dense modules it has swapped out)."""

    def __init__(self, compressor, settings: NeuronSettings, kinds, layers=None):
        self.compressor, self.settings = compressor, settings
        self.blocks = mlp_blocks(compressor.model, architecture_for(compressor.model, compressor.architecture),
                                 kinds, layers)
        self.by_name = {b.name: b for b in self.blocks}
        self._orders: dict[str, torch.Tensor] = {}
        self._spectra: dict[str, torch.Tensor] = {}
        self._moments: dict[str, Moments] = {}  # without a cache: every block's statistics
        self._last: tuple[str, Moments] | None = None  # with a cache: the last block read back
        self._windows_key: tuple | None = None
        self._written: set[str] = set()
        self.events = {"statistics_from_cache": 0, "statistics_seconds": 0.0, "selection_seconds": 0.0}

    def module_names(self) -> set[str]:
        return {m for b in self.blocks for m in b.modules}

    # statistics ---------------------------------------------------------------------------------------------
    @staticmethod
    def _stat_name(b: MlpBlock) -> str:
        return f"in:{b.down}"  # the input of down_proj: the same tensor any input-side statistic of it reads

    def _keys(self, b: MlpBlock) -> tuple[str, str]:
        """(key, family) of a block's statistics file in the cache."""
        c = self.compressor
        if self._windows_key is None:
            self._windows_key = (torch.cat(list(c.batches)),)
        windows = self._windows_key[0]
        return (c.cache.statistics_key(windows, [f"neurons:{b.down}"], c.skip_first),
                c.cache.statistics_family(windows, c.skip_first))

    def statistics_keys(self) -> list[str] | None:
        """Every block's statistics key (what the sensitivity table's key names), None without a cache."""
        if self.compressor.cache is None or self.compressor.batches is None:
            return None
        return [self._keys(b)[0] for b in self.blocks]

    def _from_cache(self, b: MlpBlock) -> Moments | None:
        c = self.compressor
        if c.cache is None or c.batches is None:
            return None
        key, family = self._keys(b)
        _, stats = c.cache.find_statistics(key, family, [self._stat_name(b)], device=c._device())
        return None if stats is None else stats[self._stat_name(b)]

    def spectra(self) -> dict[str, torch.Tensor]:
        """Each block's cost per neuron in leverage order (``lord.neurons.residual_spectrum``): from the cached
        statistics, or gathered block by block on the dense model."""
        missing = [b for b in self.blocks if b.name not in self._spectra]
        todo = []
        for b in missing:
            m = self._from_cache(b)
            if m is None:
                todo.append(b)
                continue
            if b.name not in self._written:  # a cache hit is a file another run wrote
                self.events["statistics_from_cache"] += 1
            self._summarise(b, m)
        if todo:
            self._gather(todo)
        return {b.name: self._spectra[b.name] for b in self.blocks}

    def _gather(self, todo: list[MlpBlock]) -> None:
        c = self.compressor
        if c.batches is None:
            raise LordError("neuron selection needs calibration data: pass calibration batches")
        if c._originals:
            raise LordError("neuron statistics are gathered on the dense model; call restore() first")
        t = time.perf_counter()
        model = c.model
        blocks = model.get_submodule(architecture_for(model, c.architecture).blocks)
        device = c._device()
        inputs = block_inputs(model, blocks[0], c.batches, device)
        wanted = {b.block: b for b in todo}
        last = max(wanted)
        for i in progress_bar(range(last + 1), desc="neuron statistics", unit="block", disable=not c.progress):
            b, acc, handles = wanted.get(i), {}, []
            if b is not None:
                slot = StatSlot(self._stat_name(b), "input", b.down, b.d_ff)
                acc[slot.key] = (Float64Moments if b.down_bias else Moments)(b.d_ff, device=device)
                handles = register_stat_hooks(model, [slot], acc, c.skip_first)
            try:
                advance_inputs(blocks[i], inputs)  # the block's outputs become the next block's inputs
            finally:
                for h in handles:
                    h.remove()
            if b is not None:
                self.events["statistics_seconds"] += time.perf_counter() - t
                m, stored = acc[self._stat_name(b)], acc[self._stat_name(b)]
                if not b.down_bias:  # float32 sums (module docstring), the same from the cache or not
                    stored = Moments.__new__(Moments)
                    stored.sum_vv, stored.sum_v, stored.n = m.sum_vv.to(torch.float32), m.sum_v, m.n
                    m.sum_vv = stored.sum_vv.to(torch.float64)
                if c.cache is not None:
                    key, family = self._keys(b)
                    c.cache.store_statistics(key, {self._stat_name(b): stored}, {"neurons": b.down}, family)
                    self._written.add(b.name)
                self._summarise(b, m)
                t = time.perf_counter()
        del inputs

    def _summarise(self, b: MlpBlock, m: Moments) -> None:
        """Keep the block's neuron order and cost curve (and its statistics when there is no cache to read)."""
        t = time.perf_counter()
        s = self.settings
        K, _ = fit_statistics(m, b.down_bias)
        W, _ = dense_weight(self.compressor._dense_module(b.down))
        try:
            order = neuron_order(leverage_scores(K, s.ridge))
            spectrum = residual_spectrum(W.detach().to(K.device, torch.float64), K, order, s.refit_ridge)
        except LordError as e:
            raise LordError(f"{b.name}: {e}") from None
        self._orders[b.name], self._spectra[b.name] = order, spectrum.cpu()
        if self.compressor.cache is None:
            self._moments[b.name] = m
        self.events["selection_seconds"] += time.perf_counter() - t

    def _statistics_of(self, b: MlpBlock) -> Moments:
        if b.name in self._moments:
            return self._moments[b.name]
        if self._last is not None and self._last[0] == b.name:
            return self._last[1]
        m = self._from_cache(b)
        if m is None:
            raise LordError(f"the neuron statistics of {b.name} are no longer in the cache "
                            f"({self.compressor.cache.root / 'stats'}); run again")
        self._last = (b.name, m)
        return m

    # allocation and weights ---------------------------------------------------------------------------------
    def candidates(self, spectra: dict | None = None) -> list[Candidate]:
        """One candidate per block: its "rank" is the number of neurons kept (zero costs unless ``spectra``)."""
        out = []
        for b in self.blocks:
            spectrum = spectra[b.name] if spectra is not None else torch.zeros(1)
            out.append(Candidate(b.name, KIND, b.dense_params, b.per_neuron, b.bias_params, b.d_ff,
                                 spectrum.detach().to(torch.float64).cpu(), per_vector=True))
        return out

    def weights(self, name: str, k: int) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
        """``{layer: (weight, bias or None)}`` of block ``name`` keeping ``k`` neurons: the kept rows of gate and up,
        and down_proj refitted (float64)."""
        t = time.perf_counter()
        b = self.by_name[name]
        if b.name not in self._orders:
            self.spectra()
        K, mu = fit_statistics(self._statistics_of(b), b.down_bias)
        S = kept_neurons(self._orders[b.name], k).to(K.device)
        out = {}
        for n in b.inputs:
            W, bias = dense_weight(self.compressor._dense_module(n))
            rows = S.to(W.device)
            out[n] = (W.detach()[rows].to(torch.float64),
                      None if bias is None else bias.detach()[rows].to(torch.float64))
        W, bias = dense_weight(self.compressor._dense_module(b.down))
        W = W.detach().to(K.device, torch.float64)
        W_kept = refit_down(W, K, S, self.settings.refit_ridge)
        out[b.down] = (W_kept, None if bias is None else refit_bias(W, W_kept, bias.detach().to(K.device), mu, S))
        self.events["selection_seconds"] += time.perf_counter() - t
        return out

    def record(self, choice: dict, candidates: list[Candidate]) -> dict:
        """What the allocation chose for each block (neurons kept, parameters removed, the refit's estimated cost
        and, with ``rank.allocation=measured``, the measured KL), with the settings and what it cost."""
        by = {c.name: c for c in candidates}
        blocks = []
        for b in self.blocks:
            c, k = by[b.name], choice[b.name]
            row = {"name": b.name, "block": b.block, "d_ff": b.d_ff, "kept": b.d_ff if k is None else k,
                   "params_removed": b.dense_params - c.kept(k), "estimated_cost": c.loss(k),
                   "estimated_cost_fraction": c.loss_fraction(k)}
            if c.costs is not None:
                row["measured_kl"] = 0.0 if k is None else c.costs.get(k)
            blocks.append(row)
        return {"ridge": self.settings.ridge, "refit_ridge": self.settings.refit_ridge, "blocks": blocks,
                "neurons_kept": sum(r["kept"] for r in blocks), "neurons_dense": sum(b.d_ff for b in self.blocks),
                "params_removed": sum(r["params_removed"] for r in blocks),
                "dense_blocks": sorted(b.name for b in self.blocks if choice[b.name] is None), **self.events}

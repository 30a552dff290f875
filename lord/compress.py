"""Compress a causal LM: select targets, calibrate, decompose, replace modules (paper Algorithm 1).

``compress_model`` is the one call most users need. A sweep over ranks and methods uses a ``Compressor``,
which owns what the points of a sweep share -- the targets, the calibration statistics and the bases::

    c = Compressor(model, kinds=["mlp_down"], batches=windows)
    for r in (25, 50):
        report = c.apply("lord", RankSpec("reduction", r))    # the model, compressed in place
        ...                                                    # evaluate it
        c.restore()                                            # dense again; the next rank slices the bases

Calibration modes:

* ``oneshot`` -- one pass of the dense model; the statistics (and bases) serve every rank and method.
* ``sequential`` -- block by block: block ``i`` is calibrated on the hidden states produced by blocks
  ``0..i-1`` *already compressed* (Algorithm 1 updates the model inside its loop). Hidden states of
  all calibration windows are kept between blocks, so the cost is about two dense forward passes.
  Valid only for the rank it was run with, so nothing of it is reused.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import torch
import torch.nn as nn

from lord.allocation import candidate_for
from lord.architectures import Target, architecture_for, select_targets
from lord.cache import CompressionCache
from lord.calibration import (ChannelAbsMean, Moments, advance_inputs, block_inputs, run_hooked, channel_key,
                              collect_channel_abs_means, collect_statistics, register_stat_hooks, stat_slot)
from lord.errors import LordError, check_skip_first
from lord.methods import Basis, Method, get_method
from lord.modules import dense_weight, shared_name
from lord.progress import progress_bar
from lord.ranks import RankSpec
from lord.structure import Decomposition, Planned, dense_W_b, plan_targets, set_module, write_factors

CALIBRATION_MODES = ("oneshot", "sequential")
STATISTICS = ("moments", "channel_abs_mean", "curvature")  # what a method's basis can read (Method.statistic)
log = logging.getLogger(__name__)


@dataclass
class CompressionConfig:
    method: object = "lord"  # a registered method's name, a dict of its options with 'name', or a Method
    kinds: list = field(default_factory=lambda: ["mlp_down"])
    rank: RankSpec = field(default_factory=RankSpec)
    group: bool = False
    layers: list | None = None  # block indices; None = every block
    calibration: str = "oneshot"
    architecture: dict | None = None  # mapping for an architecture lord does not know
    skip_first: int = 0  # window positions left out of the statistics (lord.calibration)

    def __post_init__(self):
        get_method(self.method)  # unknown names and options fail here
        if self.calibration not in CALIBRATION_MODES:
            raise LordError(f"unknown calibration mode {self.calibration!r}; "
                            f"choose from: {', '.join(CALIBRATION_MODES)}")
        if isinstance(self.rank, dict):
            self.rank = RankSpec(**self.rank)
        check_skip_first("skip_first", self.skip_first)


class Compressor:
    """Targets, statistics and bases of one model and layer selection, for any number of ``apply`` calls.

    ``batches``: calibration windows (LongTensors), needed by data-aware methods unless ``statistics`` are
    given. ``reuse_bases``: keep each basis (``Q`` in float32) for later ranks and bias variants -- in memory,
    or in ``cache`` (a ``CompressionCache``, which also stores the statistics) so that other processes reuse
    them too; ``False`` computes each basis in float64, applies it and frees it (lowest peak memory).
    """

    def __init__(self, model: nn.Module, kinds=("mlp_down",), group: bool = False, layers=None, architecture=None,
                 batches=None, statistics: dict[str, Moments] | None = None, cache: CompressionCache | None = None,
                 reuse_bases: bool = False, progress: bool = True, skip_first: int = 0, neurons=None):
        self.model = model
        self.skip_first = skip_first
        self.architecture = architecture
        self.targets: list[Target] = select_targets(model, list(kinds), group, layers, architecture)
        # neuron selection (``lord.neuron_selection``; ``neurons``: its NeuronSettings): the selected MLP blocks keep
        # whole neurons, allocated with the other targets' ranks under one budget, and leave the low-rank targets
        self.neurons = None
        if neurons is not None:
            from lord.neuron_selection import NeuronSelection

            self.neurons = NeuronSelection(self, neurons, list(kinds), layers)
            mlp = self.neurons.module_names()
            self.targets = [t for t in self.targets if not set(t.members) <= mlp]
        self.batches = batches
        self.cache = cache
        self.reuse_bases = reuse_bases
        self.progress = progress
        self._statistics = statistics
        self._statistics_key: str | None = None
        self._channels: dict[str, ChannelAbsMean] | None = None  # mean |x| per input channel (ASVD)
        self._channels_key: str | None = None
        self._curvature: dict[str, dict] = {}  # K-FAC factors (kfac) per output form: "full", "diagonal", ...
        self._curvature_key: dict[str, str | None] = {}
        self._bases: dict[str, dict[str, Basis]] = {}  # in-memory reuse: basis key -> target name -> basis
        self._stored: set[tuple[str, str]] = set()  # (basis key, target) this Compressor wrote to the cache
        self._originals: dict[str, nn.Module] = {}  # dense modules replaced by the last apply
        self._added: list[tuple[str, str]] = []  # (parent, attribute) of shared bottlenecks added by it
        self.events: dict = {}  # what the last calls did (statistics/bases from cache), for run records
        # allocation 'measured': {"windows": held-out calibration windows, "grid": removal shares} (lord.sensitivity)
        self.sensitivity: dict | None = None

    # statistics --------------------------------------------------------------------------------------------
    @property
    def statistics(self) -> dict[str, Moments]:
        """Oneshot statistics of every target: given, from the cache, or one calibration pass."""
        if self._statistics is None:
            if self.batches is None:
                raise LordError("calibration statistics are needed: pass calibration batches or statistics")
            key = family = None
            if self.cache is not None:
                windows = torch.cat(list(self.batches))
                key = self.cache.statistics_key(windows, [t.name for t in self.targets], self.skip_first)
                family = self.cache.statistics_family(windows, self.skip_first)
                names = sorted({stat_slot(self.model, t).key for t in self.targets})
                key, self._statistics = self.cache.find_statistics(key, family, names, device=self._device())
            self.events["statistics_from_cache"] = self._statistics is not None
            if self._statistics is None:
                self._statistics = self.calibrate(self.targets)
                if self.cache is not None:
                    self.cache.store_statistics(key, self._statistics, {"targets": len(self.targets)}, family)
            self._statistics_key = key
            self._check_rank(self._statistics)
        return self._statistics

    @property
    def channel_statistics(self) -> dict[str, ChannelAbsMean]:
        """Mean ``|x|`` of every target's input channels (methods whose ``statistic`` is "channel_abs_mean"):
        from the cache, or one calibration pass."""
        if self._channels is None:
            if self.batches is None:
                raise LordError("channel statistics are needed: pass calibration batches")
            key = None
            if self.cache is not None:
                windows = torch.cat(list(self.batches))
                key = self.cache.statistics_key(windows, [t.name for t in self.targets], self.skip_first)
                self._channels = self.cache.load_channel_statistics(key, device=self._device())
            self.events["channel_statistics_from_cache"] = self._channels is not None
            if self._channels is None:
                arch = architecture_for(self.model, self.architecture)
                self._channels = collect_channel_abs_means(self.model, self.targets, self.batches, arch.blocks,
                                                           self.progress, self.skip_first)
                if self.cache is not None:
                    self.cache.store_channel_statistics(key, self._channels)
            self._channels_key = key
        return self._channels

    def curvature(self, output: str) -> dict:
        """K-FAC factors of every target (``lord.curvature``; methods whose ``statistic`` is "curvature"): from the
        cache, or one forward and backward pass over the calibration windows."""
        from lord.curvature import collect_curvature, load_curvature, save_curvature

        if output not in self._curvature:
            if self.batches is None:
                raise LordError("curvature statistics are needed: pass calibration batches")
            key = f = None
            if self.cache is not None:
                windows = torch.cat(list(self.batches))
                key = self.cache.statistics_key(windows, [t.name for t in self.targets], self.skip_first)
                f = self.cache.curvature_file(key, output)
            stats = None
            if f is not None and f.is_file():
                try:
                    stats = load_curvature(f, device=self._device())
                except LordError as e:
                    log.warning("%s; recomputing it", e)
                    f.unlink(missing_ok=True)
            self.events["curvature_from_cache"] = stats is not None
            if stats is None:
                stats = collect_curvature(self.model, self.targets, self.batches, output, self.progress,
                                          self.skip_first)
                if f is not None:
                    save_curvature(stats, f)
            self._curvature[output], self._curvature_key[output] = stats, None if key is None else f"{key}|{output}"
        return self._curvature[output]

    def statistics_for(self, method: Method) -> dict | None:
        """What ``method``'s bases read: moments, channel statistics, curvature, or nothing (data-free, or no
        low-rank target: every selected layer is an MLP layer of neuron selection)."""
        if not method.needs_statistics or not self.targets:
            return None
        if _statistic(method) == "curvature":
            return self.curvature(method.output_form)
        return self.channel_statistics if _reads_channels(method) else self.statistics

    def _statistics_key_for(self, method: Method) -> str | None:
        if not method.needs_statistics:
            return None
        if _statistic(method) == "curvature":
            return self._curvature_key.get(method.output_form)
        return self._channels_key if _reads_channels(method) else self._statistics_key

    def _check_rank(self, stats: dict[str, Moments]) -> None:
        """Warn once, and record, when a statistic has fewer tokens than it needs to have full rank.

        A centred covariance of ``n`` vectors has rank at most ``n - 1``: with ``n - 1 < dim`` the basis's
        trailing directions are arbitrary. Output side (wide layers), full rank still reproduces the layer on
        every input (the basis is complete); input side (tall layers, groups), full rank reproduces it only on the
        span of the calibration inputs. Both ranks' errors stay optimal *on the calibration data*."""
        short = {k: m.dim for k, m in stats.items() if m.n - 1 < m.dim}
        if not short:
            return
        n = min(stats[k].n for k in short)
        need = max(short.values()) + 1
        log.warning("calibration has %d tokens per statistic but %d of %d statistics have up to %d dimensions: "
                    "their covariance is rank-deficient (rank <= %d); full-rank decompositions of tall layers are "
                    "then exact only on the calibration inputs' span. Calibrate on >= %d tokens for full-rank "
                    "statistics.", n, len(short), len(stats), need - 1, n - 1, need)
        self.events["rank_deficient_statistics"] = {"tokens": n, "statistics": len(short), "of": len(stats),
                                                    "max_dim": need - 1, "tokens_needed": need}

    def calibrate(self, targets: list[Target]) -> dict[str, Moments]:
        arch = architecture_for(self.model, self.architecture)
        return collect_statistics(self.model, targets, self.batches, blocks_path=arch.blocks, progress=self.progress,
                                  skip_first=self.skip_first)

    def _device(self):
        return next(self.model.parameters()).device

    def _dense_module(self, name: str) -> nn.Module:
        """The dense module at ``name``, also while ``apply`` has swapped it out."""
        original = self._originals.get(name)
        return original if original is not None else self.model.get_submodule(name)

    # bases --------------------------------------------------------------------------------------------------
    def basis(self, method: Method, target: Target, statistics: dict[str, Moments] | None) -> Basis:
        """``target``'s basis under ``method`` (from memory or the cache when bases are reused)."""
        if not self.reuse_bases:
            return self._compute_basis(method, target, statistics)
        mem = self._bases.setdefault(method.basis_key(), {})
        if target.name in mem:
            return mem[target.name]
        folder = None
        if self.cache is not None:
            stats_key = self._statistics_key_for(method)
            folder = self.cache.bases_dir(stats_key, method.basis_key())
            cached = self.cache.load_basis(folder, target.name)
            if cached is not None:
                if (method.basis_key(), target.name) not in self._stored:  # not a re-read of its own basis
                    self.events["bases_from_cache"] = self.events.get("bases_from_cache", 0) + 1
                return cached
        b = self._compute_basis(method, target, statistics)
        b = b.with_dtype(torch.float32)
        if folder is not None:
            self.cache.store_basis(folder, target.name, b)
            self._stored.add((method.basis_key(), target.name))
        else:
            mem[target.name] = b
        return b

    def _compute_basis(self, method: Method, target: Target, statistics) -> Basis:
        W, _ = dense_W_b(self.model, target.members)
        if not method.needs_statistics:
            return method.basis(W, None, None)
        return method.basis(W, *self._statistic_of(method, target, statistics))

    def _statistic_of(self, method: Method, target: Target, statistics):
        """(the statistic ``target``'s basis reads under ``method``, its side)."""
        if _statistic(method) == "curvature":
            from lord.curvature import curvature_for

            return curvature_for(statistics, target, method.output_form), "both"
        if _reads_channels(method):
            key, side = channel_key(target), "input"
        else:
            slot = stat_slot(self.model, target)
            key, side = slot.key, slot.side
        if statistics is None or key not in statistics:
            raise LordError(f"no calibration statistics for {target.name}; calibrate with the same layer selection")
        return statistics[key], side

    # applying ------------------------------------------------------------------------------------------------
    def plan(self, method, rank: RankSpec) -> list[Planned]:
        """Targets with their ranks; at ``rank.unit=budget`` the allocation's (bases needed), dense ones left out."""
        return self._plan(method, rank)[0]

    def _plan(self, method, rank: RankSpec) -> tuple[list[Planned], dict[str, int]]:
        """(``plan``, the neurons each MLP block keeps: ``{block name: k}``, blocks left dense out)."""
        method = get_method(method)
        if rank.unit != "budget":
            if self.neurons is not None:
                raise LordError("neuron selection allocates the neurons each MLP block keeps under a parameter "
                                "budget: set rank.unit=budget (any rank.allocation)")
            return plan_targets(self.model, self.targets, rank, method.keeps_mean), {}
        ranks = self.allocate(method, rank)
        planned = [Planned(t, replace(d, rank=ranks[d.name])) for t, d in self._shapes(method)
                   if ranks[d.name] is not None]
        blocks = self.neurons.blocks if self.neurons is not None else []
        return planned, {b.name: ranks[b.name] for b in blocks if ranks[b.name] is not None}

    def _shapes(self, method: Method) -> list[Planned]:
        """Every target's decomposition (shapes, biases) before a rank is chosen (rank 1 stands in)."""
        return plan_targets(self.model, self.targets, RankSpec("rank", 1, force=True), method.keeps_mean)

    def _dense_params(self, target: Target) -> int:
        """Weights and biases of ``target``'s dense modules (``Decomposition.dense_params`` also counts the biases
        a mean-keeping method adds)."""
        total = 0
        for m in target.members:
            W, b = dense_weight(self._originals.get(m, self.model.get_submodule(m)))
            total += W.numel() + (0 if b is None else b.numel())
        return total

    def _candidates(self, method: Method, spectra=None) -> list:
        """Every target as an allocation candidate, and every MLP block of neuron selection (zero spectra unless
        ``spectra`` gives one per name)."""
        # spectra of moment bases are means over the calibration vectors; channel-scaled (ASVD) and data-free
        # spectra are totals
        per_vector = method.needs_statistics and not _reads_channels(method)
        out = []
        for t, d in self._shapes(method):
            spectrum = spectra[t.name] if spectra is not None else torch.zeros(1)
            out.append(candidate_for(d, spectrum, per_vector, self._dense_params(t)))
        if self.neurons is not None:
            out += self.neurons.candidates(spectra)
        return out

    def check_budget(self, method, rank: RankSpec, grid=None) -> None:
        """What a budget's config can tell before any statistics (a weightless model is enough)."""
        from lord.allocation import check_budget

        check_budget(self._candidates(get_method(method)), rank.value, rank.round_to, grid)

    def allocate(self, method, rank: RankSpec) -> dict[str, int | None]:
        """Each target's rank (None: dense) for ``rank.unit=budget``, from the method's spectra (its bases), and
        for a criterion that needs them (``measured``) from measured sensitivities (``lord.sensitivity``)."""
        from lord.allocation import ALLOCATORS, allocate

        method = get_method(method)
        stats = self.statistics_for(method)
        spectra = {t.name: self.basis(method, t, stats).spectrum for t in self.targets}
        if self.neurons is not None:
            spectra.update(self.neurons.spectra())
        candidates = self._candidates(method, spectra)
        if getattr(ALLOCATORS.get(rank.allocation), "needs_measurement", False):
            candidates = self._measured(method, candidates, rank.round_to)
        ranks = allocate(candidates, rank.value, rank.allocation, rank.round_to)
        dense = sum(c.dense_params for c in candidates)
        kept = sum(c.kept(ranks[c.name]) for c in candidates)
        self.events["allocation"] = {"criterion": rank.allocation, "budget_percent": rank.value,
                                     "removed_percent": 100 * (dense - kept) / dense, "selection_params": dense,
                                     "dense_targets": sorted(n for n, r in ranks.items() if r is None)}
        if self.neurons is not None:
            self.events["neurons"] = self.neurons.record(ranks, candidates)
        return ranks

    def _measured(self, method: Method, candidates: list, step: int) -> list:
        """``candidates`` with their measured cost per rank option (``sensitivity``: the held-out windows and the
        options, set by whoever runs the allocation, e.g. stage ``decompose``)."""
        from dataclasses import replace as with_costs

        from lord.sensitivity import measure_sensitivities, table_key

        if self.sensitivity is None:
            raise LordError("allocation 'measured' needs held-out calibration windows: set Compressor.sensitivity "
                            "(stage decompose does, from the sensitivity config)")
        windows, grid = self.sensitivity["windows"], self.sensitivity["grid"]
        table_file, older = None, ()
        if self.cache is not None:  # and the older layout's tables of this grid and of the default grid
            from lord.identity import ADDED_KEYS

            folder, statistics_key = self.cache.root / "sensitivity", self._statistics_key_for(method)
            table_file = folder / f"{table_key(self, method, statistics_key, windows)}.json"
            older = tuple(dict.fromkeys(folder / f"{table_key(self, method, statistics_key, windows, g, step)}.json"
                                        for g in (grid, ADDED_KEYS["sensitivity"]["grid"])))
        table, record = measure_sensitivities(self, method, candidates, windows, grid, step, table_file,
                                              self.progress, older)
        self.events["sensitivity"] = record
        return [with_costs(c, costs=table[c.name]) for c in candidates]

    def apply(self, method, rank: RankSpec, calibration: str = "oneshot") -> dict:
        """Compress the model in place (from its dense state) and return a report of what was replaced."""
        method = get_method(method)
        if method.decomposes and method.needs_statistics and self.batches is None and self._statistics is None:
            raise LordError(f"method {method.name!r} needs calibration data: pass calibration batches or statistics")
        self.restore()
        planned, kept = self._plan(method, rank)
        if not method.decomposes:
            return _report(method, calibration, [])
        if calibration == "sequential" and method.needs_statistics:
            check_sequential(method, rank)
            self._remember(planned)
            self._apply_sequential(method, planned)
        else:
            self.swap_in(method, planned)
        self.swap_in_neurons(kept)
        report = _report(method, calibration, [d for _, d in planned],
                         sum(self._dense_params(t) for t, _ in planned))
        if self.neurons is not None:
            report["resized"] = self.resized()
        return report

    def _remember(self, planned: list[Planned]) -> None:
        """Keep the dense modules (and the shared bottlenecks to remove) of ``planned`` for ``restore``."""
        for t, d in planned:
            for m in t.members:
                self._originals.setdefault(m, self.model.get_submodule(m))
            if len(d.members) > 1:
                self._added.append((d.members[0].rsplit(".", 1)[0], shared_name(d.members)))

    def swap_in(self, method: Method, planned: list[Planned], bases: dict[str, Basis] | None = None) -> None:
        """Decompose the ``planned`` targets (others stay as they are) with their bases (``bases``, or the
        Compressor's); ``restore`` undoes it."""
        self._remember(planned)
        stats = None if bases is not None else self.statistics_for(method)
        for t, d in progress_bar(planned, desc=f"{method.name} decomposition", unit="layer",
                                 disable=not self.progress or len(planned) == 1):
            self._apply_one(method, t, d, bases[t.name] if bases is not None else self.basis(method, t, stats))

    def swap_in_neurons(self, kept: dict[str, int]) -> None:
        """Each MLP block named in ``kept`` keeps that many neurons (smaller gate/up/down ``nn.Linear`` layers, down
        refitted: ``lord.neurons``); ``restore`` undoes it."""
        from lord.hf.modeling_lord import resize_linears

        for name, k in kept.items():
            weights = self.neurons.weights(name, k)
            for m in weights:
                self._originals.setdefault(m, self.model.get_submodule(m))
            new = resize_linears(self.model, {m: [W.shape[1], W.shape[0], b is not None]
                                              for m, (W, b) in weights.items()})
            with torch.no_grad():
                for m, (W, b) in weights.items():
                    new[m].weight.copy_(W)
                    if b is not None:
                        new[m].bias.copy_(b)

    def resized(self) -> dict[str, list]:
        """``{layer: [in_features, out_features, bias]}`` of every layer neuron selection has made smaller."""
        if self.neurons is None:
            return {}
        out = {}
        for m in sorted(self.neurons.module_names()):
            mod = self.model.get_submodule(m)
            if mod is not self._dense_module(m):
                out[m] = [mod.in_features, mod.out_features, mod.bias is not None]
        return out

    def _apply_one(self, method: Method, t: Target, d: Decomposition, basis: Basis) -> None:
        W, b = dense_W_b(self.model, t.members)
        write_factors(self.model, d, *method.factors(basis, W, b, d.rank))

    def restore(self) -> None:
        """Put the dense modules back (a tied LM head untied by ``apply`` stays untied, with equal values)."""
        for name, mod in self._originals.items():
            set_module(self.model, name, mod)
        for parent, attr in self._added:
            delattr(self.model.get_submodule(parent), attr)
        self._originals, self._added = {}, []

    def _apply_sequential(self, method: Method, planned: list[Planned]) -> None:
        if self.batches is None:
            raise LordError("sequential calibration needs calibration batches")
        model = self.model
        arch = architecture_for(model, self.architecture)
        pre = [p for p in planned if p.target.block is None and p.target.kind == "embed"]
        post = [p for p in planned if p.target.block is None and p.target.kind != "embed"]
        by_block: dict[int, list[Planned]] = {}
        for p in planned:
            if p.target.block is not None:
                by_block.setdefault(p.target.block, []).append(p)

        def run_targets(pairs, stats):
            for t, d in pairs:
                self._apply_one(method, t, d, self._compute_basis(method, t, stats))

        if pre:
            run_targets(pre, self.calibrate([p.target for p in pre]))
        if by_block:
            blocks = model.get_submodule(arch.blocks)
            inputs = block_inputs(model, blocks[0], self.batches, self._device())
            last = max(by_block)
            for i in progress_bar(range(last + 1), desc="sequential calibration", unit="block",
                                  disable=not self.progress):
                block = blocks[i]
                if i in by_block:
                    run_targets(by_block[i], _block_statistics(model, block, by_block[i], inputs, self._device(),
                                                               self.skip_first))
                if i < last:
                    advance_inputs(block, inputs)
            del inputs
        if post:
            run_targets(post, self.calibrate([p.target for p in post]))


def _statistic(method: Method) -> str:
    if method.statistic not in STATISTICS:
        raise LordError(f"method {method.name!r} reads statistic {method.statistic!r}; known: {', '.join(STATISTICS)}")
    return method.statistic


def _reads_channels(method: Method) -> bool:
    return _statistic(method) == "channel_abs_mean"


def check_sequential(method: Method, rank: RankSpec) -> None:
    """Sequential calibration (Alg. 1) gathers moments block by block; methods reading other statistics, and
    budgets (allocated from every block's spectra at once), run oneshot."""
    if method.needs_statistics and _statistic(method) != "moments":
        raise LordError(f"method {method.name!r} reads {method.statistic} statistics, which sequential calibration "
                        "does not gather; use calibration.mode=oneshot")
    if rank.unit == "budget":
        raise LordError("rank.unit=budget allocates ranks from the oneshot statistics of every block; use "
                        "calibration.mode=oneshot")


def _block_statistics(model, block, pairs: list[Planned], inputs, device, skip_first: int = 0) -> dict[str, Moments]:
    stats: dict[str, Moments] = {}
    slots = [stat_slot(model, t) for t, _ in pairs]
    for s in slots:
        stats.setdefault(s.key, Moments(s.dim, device=device))
    run_hooked(block, inputs, register_stat_hooks(model, slots, stats, skip_first))
    return stats


def _report(method: Method, calibration: str, decs: list[Decomposition], dense_params: int = 0) -> dict:
    return {
        "method": method.name,
        "calibration": calibration,
        "decompositions": decs,
        "dense_params": dense_params,  # the dense targets' weights and biases (not the biases a method adds)
        "lowrank_params": sum(d.lowrank_params for d in decs),
    }


def compress_model(model: nn.Module, cfg: CompressionConfig, batches=None, statistics=None,
                   progress: bool = True) -> dict:
    """Compress ``model`` in place; returns a report (method, decompositions, parameter counts).

    ``batches``: a list of LongTensors of token ids (calibration windows), needed by every data-aware method
    unless ``statistics`` (oneshot) are given. Each target's basis is computed, applied and freed in turn, so
    peak memory stays near model + statistics; for many ranks of one model use a ``Compressor``.
    """
    c = Compressor(model, cfg.kinds, cfg.group, cfg.layers, cfg.architecture, batches=batches,
                   statistics=statistics, progress=progress, skip_first=cfg.skip_first)
    return c.apply(cfg.method, cfg.rank, cfg.calibration)

"""Content-keyed disk caches for what a sweep would otherwise recompute: calibration statistics and bases.

Layout under a cache root (``paths.cache_dir`` for experiments; safe to delete at any time)::

    stats/<key>.safetensors           oneshot statistics per (model, calibration windows, targets)
    stats/<key>.json                  which statistics that file holds, and its family (model, windows,
                                      skip_first): a selection inside a larger one reads the larger one's file
    stats/<key>.channels.safetensors  mean |x| per input channel (methods whose ``statistic`` is
                                      "channel_abs_mean", ASVD), per (model, windows, targets, skip_first)
    bases/<key>/<target>.safetensors  one basis per target, per (model, statistics, method's basis)

A key is a hash of everything that determines the content, so a hit is always the same numbers, whichever
process (a joblib or submitit job too) wrote it. Bases are stored in float32 (``Q``) and float64 (spectrum,
mean); every run that reuses bases uses float32 ``Q``, hit or miss, so a hit reproduces a miss exactly.
Files are written atomically (temporary file, then rename).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from lord.atomic import read_json, temp_file, write_json_atomic
from lord.calibration import (ChannelAbsMean, Moments, load_channel_statistics, load_statistics,
                              save_channel_statistics, save_statistics)
from lord.errors import LordError

log = logging.getLogger(__name__)


def content_key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def tensor_hash(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


class CompressionCache:
    """Statistics and bases of one model (``model_key`` names its weights) under ``root``."""

    def __init__(self, root: str | os.PathLike, model_key: str):
        self.root = Path(root)
        self.model_key = model_key

    # statistics -------------------------------------------------------------------------------------------
    def statistics_key(self, windows: torch.Tensor, target_names: list[str], skip_first: int = 0) -> str:
        parts = (self.model_key, tensor_hash(windows), target_names, "oneshot")
        return content_key(*parts, {"skip_first": skip_first}) if skip_first else content_key(*parts)

    def statistics_family(self, windows: torch.Tensor, skip_first: int = 0) -> str:
        """What every statistic of one calibration pass shares: model, windows, skip_first. Two files of one
        family hold the same numbers under the same statistic name (hooks only read what the model computes)."""
        return content_key(self.model_key, tensor_hash(windows), "oneshot", {"skip_first": skip_first})

    def _stats_file(self, key: str) -> Path:
        return self.root / "stats" / f"{key}.safetensors"

    def _stats_index(self, key: str) -> Path:
        return self.root / "stats" / f"{key}.json"

    def find_statistics(self, key: str, family: str, names: list[str], device=None
                        ) -> tuple[str, dict[str, Moments] | None]:
        """(key, statistics) for a selection whose statistics are ``names``: its own file (``key``), else any file
        of the same family that holds all of them (a larger selection: all blocks when one block is asked for),
        read without the rest; (key, None) on a miss. The key returned names the file read, so that bases
        computed from its statistics are shared with the selection that wrote it."""
        exact = self.load_statistics(key, device=device)
        if exact is not None:
            if read_json(self._stats_index(key)) is None:  # written before files were indexed
                write_json_atomic(self._stats_index(key), {"family": family, "statistics": sorted(exact)})
            return key, exact
        for index in sorted((self.root / "stats").glob("*.json")):
            entry = read_json(index)
            other = index.stem
            if (not isinstance(entry, dict) or entry.get("family") != family
                    or not set(names) <= set(entry.get("statistics", ())) or not self._stats_file(other).is_file()):
                continue
            try:
                return other, load_statistics(self._stats_file(other), device=device, keys=names)
            except LordError as e:
                log.warning("%s; not reading statistics from it", e)
        return key, None

    def load_statistics(self, key: str, device=None) -> dict[str, Moments] | None:
        f = self._stats_file(key)
        if not f.is_file():
            return None
        try:
            return load_statistics(f, device=device)
        except LordError as e:
            log.warning("%s; recomputing it", e)
            f.unlink(missing_ok=True)
            self._stats_index(key).unlink(missing_ok=True)
            return None

    def store_statistics(self, key: str, stats: dict[str, Moments], meta: dict, family: str | None = None) -> None:
        save_statistics(stats, self._stats_file(key), meta)
        if family is not None:
            write_json_atomic(self._stats_index(key), {"family": family, "statistics": sorted(stats)})

    def _channels_file(self, key: str) -> Path:
        return self.root / "stats" / f"{key}.channels.safetensors"

    def load_channel_statistics(self, key: str, device=None) -> dict[str, ChannelAbsMean] | None:
        f = self._channels_file(key)
        if not f.is_file():
            return None
        try:
            return load_channel_statistics(f, device=device)
        except LordError as e:
            log.warning("%s; recomputing it", e)
            f.unlink(missing_ok=True)
            return None

    def store_channel_statistics(self, key: str, stats: dict[str, ChannelAbsMean]) -> None:
        save_channel_statistics(stats, self._channels_file(key))

    def curvature_file(self, key: str, output: str) -> Path:
        """K-FAC factors (``lord.curvature``) of the selection whose statistics key is ``key``."""
        return self.root / "stats" / f"{key}.curvature-{output}.safetensors"

    # bases ------------------------------------------------------------------------------------------------
    def bases_dir(self, statistics_key: str | None, basis_key: str) -> Path:
        return self.root / "bases" / content_key(self.model_key, statistics_key, basis_key)

    def load_basis(self, folder: Path, target: str):
        from lord.methods import Basis

        f = folder / f"{target}.safetensors"
        if not f.is_file():
            return None
        try:
            t = load_file(str(f))
            return Basis(t["Q"], t["spectrum"], t.get("mean_z"), t.get("dual"))
        except Exception as e:  # a truncated or foreign file: recompute it
            log.warning("basis cache file %s is unreadable (%s: %s); recomputing it", f, type(e).__name__, e)
            f.unlink(missing_ok=True)
            return None

    def store_basis(self, folder: Path, target: str, basis) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {"Q": basis.Q.cpu().contiguous(), "spectrum": basis.spectrum.cpu().contiguous()}
        if basis.mean_z is not None:
            tensors["mean_z"] = basis.mean_z.cpu().contiguous()
        if basis.dual is not None:
            tensors["dual"] = basis.dual.cpu().contiguous()
        tmp = temp_file(folder, ".safetensors")
        try:
            save_file(tensors, tmp)
            os.replace(tmp, folder / f"{target}.safetensors")
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

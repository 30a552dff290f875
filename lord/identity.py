"""A run's identity: what determines its numbers, hashed.

identity = sha256 of
  * the resolved config without the keys that cannot change a number (``OPERATIONAL_KEYS``: where files go,
    loggers, launchers, labels, and ``budget``/``profile_name``, whose every effect reaches the keys that
    interpolate them, which stay in);
  * the content hash of the model weights (``weights_id``);
  * the content hashes of the data splits the run reads (calibration when a stage needs data, validation when
    the evaluation does).

Keys that look operational but change numbers stay in (``calibration.reuse_bases``: reused bases are float32,
streamed ones float64). Skip-if-done compares identities, never paths.

A key added to the config after results were published, whose default reproduces what those runs did, is left
out while it has that default (``ADDED_KEYS``), so adding an option never turns finished runs into new ones;
any other value is hashed like every key.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from lord.atomic import read_json, write_json_atomic

log = logging.getLogger(__name__)

OPERATIONAL_KEYS = ("logger", "launcher", "paths", "experiment_name", "budget", "profile_name", "hydra", "sweep",
                    "dry_run")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")
# dotted key -> the default under which it changes nothing that runs before it existed did
#
# HumanEval generation width and prefix sharing (eval.batch_size, eval.share_prefix) change a sample only through
# float rounding (batched matmuls, another prefill's padding): in float64 not at all, in float32 a token flips at a
# near-tie of two logits. That is the rule's case for keeping a key in (like calibration.reuse_bases), and taking
# eval.batch_size out would give every published HumanEval result a new identity. So both stay in, and:
#   * eval.share_prefix is an added key: at its default (true) it is left out, so every result from before it
#     existed (all greedy, where sharing does nothing) keeps its identity, and so does a new run that shares;
#   * eval.batch_size=auto is hashed as the word "auto", never as the width measured on the machine: the chosen
#     width and the curve it came from are in the result's metrics (metrics.generation_width), like the CPU in
#     its environment, and the identity of an auto run is the same on every machine. The greedy preset keeps 16
#     (its published runs' value); the sampled presets, with no published runs, default to auto.
ADDED_KEYS = {"calibration.skip_first": 0, "calibration.seq_len": None, "data.calibration_corpus": "stdlib",
              "rank.allocation": "uniform", "data.stdlib_root": None,
              "calibration.draw": None,
              "sensitivity": {"windows": 4, "seq_len": 256, "grid": [10, 20, 30, 40, 50, 60, 70]},
              "eval.share_prefix": True, "refit.skip_first": 0, "anchor.skip_first": 0,
              "refit.order": "block", "anchor.order": "block",
              "neurons": {"enabled": False, "ridge": 0.01, "refit_ridge": 0.001}}


def numeric_config(config: dict) -> dict:
    """The resolved config without the keys that cannot change a number (nor added keys at their default)."""
    out = {k: v for k, v in config.items() if k not in OPERATIONAL_KEYS}
    for dotted, default in ADDED_KEYS.items():
        *parents, leaf = dotted.split(".")
        node = out
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf in node and node[leaf] == default:
            out = _without(out, [*parents, leaf])
    return out


def _without(config: dict, path: list[str]) -> dict:
    """A copy of ``config`` without the key at ``path`` (the input is not changed)."""
    head, *rest = path
    if not rest:
        return {k: v for k, v in config.items() if k != head}
    return {**config, head: _without(config[head], rest)}


def _file_sha256(path: Path, cache_dir: Path | None) -> str:
    """sha256 of a file, remembered per (path, size, mtime) so a large model is hashed once."""
    st = path.stat()
    memo_key = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:24]
    memo = None if cache_dir is None else Path(cache_dir) / "hashes" / f"{memo_key}.json"
    if memo is not None and (known := read_json(memo)) is not None:
        return known["sha256"]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    digest = h.hexdigest()
    if memo is not None:
        write_json_atomic(memo, {"path": str(path), "size": st.st_size, "sha256": digest})
    return digest


def weights_id(name: str, cache_dir: str | os.PathLike | None = None) -> str:
    """Content identity of a model's weights: a zoo model's pinned GGUF sha256 (its converted files are checked
    against their recorded sha256 when loaded), a local directory's weight files hashed, or a hub id with the
    revision found in the local hub cache (``@unknown`` when it is not cached)."""
    from lord import zoo

    if name in zoo.ZOO:
        return f"zoo:{name}:gguf-sha256:{zoo.ZOO[name].sha256}"
    path = Path(str(name)).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and (p.suffix in WEIGHT_SUFFIXES or p.name in
                                                                         ("config.json", "lord.json")))
        h = hashlib.sha256()
        for f in files:
            h.update(f"{f.relative_to(path).as_posix()}\0{_file_sha256(f, cache_dir)}\n".encode())
        return f"local:sha256:{h.hexdigest()}"
    return f"hub:{name}@{_hub_revision(name)}"


def _hub_revision(repo_id: str) -> str:
    try:
        from huggingface_hub import scan_cache_dir

        for repo in scan_cache_dir().repos:
            if repo.repo_id == repo_id and repo.revisions:
                return sorted(r.commit_hash for r in repo.revisions)[-1]
    except Exception as e:  # no cache folder, or a layout this huggingface_hub cannot read: the revision is unknown
        log.debug("no cached revision for %s (%s: %s)", repo_id, type(e).__name__, e)
    return "unknown"


def run_identity(config: dict, weights: str, data: dict) -> dict:
    """{"id": <sha256 hex>, "inputs": what was hashed} for a resolved config and its content hashes."""
    inputs = {"config": numeric_config(config), "weights": weights, "data": data}
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()
    return {"id": digest, "inputs": inputs}

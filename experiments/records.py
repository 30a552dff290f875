"""Everything decided before a run computes: the config checks, the run's identity, and where its result lives.

Results: ``results/<experiment>/<model>/<method>[<setting tag>]/<layers>[.blocks<i>]/<rank>[.<eval tag>]``
``-<id8>.json``, one self-describing JSON per run (config, identity and what it hashed, environment, data,
metrics, parameters, timings). ``<id8>`` is the start of the run's identity (``lord/identity.py``): two
configurations of one point never share a file, and skip-if-done compares identities, never paths.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationToMissingValueError, MissingMandatoryValue

from lord.architectures import ALL_KINDS, block_label
from lord.atomic import temp_file
from lord.environment import REPO
from lord.errors import LordError
from lord.evaluations import EVALUATIONS, get_evaluation
from lord.identity import run_identity, weights_id
from lord.methods import METHODS
from lord.models import load_config_only
from lord.naming import method_tag, sensitivity_tag, setting_tag
from lord.params import meta_model
from lord.run_context import DATA_SOURCES, RunData
from lord.stages import STAGES, build_stages


def validate(cfg: DictConfig) -> tuple[list, object]:
    """Every check the config alone can answer; returns (stages in order, evaluation). One line naming the
    bad key, its value and what would be accepted."""
    try:
        missing = OmegaConf.missing_keys(cfg)
    except (MissingMandatoryValue, InterpolationToMissingValueError) as e:  # another key interpolates it
        m = re.search(r"Missing mandatory value: (\S+)", str(e))
        missing = {m.group(1) if m else str(e).splitlines()[0]}
    if missing:
        raise LordError(f"missing required value(s): {', '.join(sorted(missing))}; set them on the command line")
    _one_of("method.name", cfg.method.name, METHODS.names())
    _one_of("eval.name", cfg.eval.name, EVALUATIONS.names())
    _one_of("data.name", cfg.data.name, DATA_SOURCES)
    for s in cfg.stages:
        _one_of("stages", s, STAGES.names())
    bad = [k for k in cfg.layers.kinds if k not in ALL_KINDS + ("all",)]
    if bad:
        raise LordError(f"layers.kinds has unknown kind(s) {bad}; allowed: {', '.join(ALL_KINDS + ('all',))}")
    indices = cfg.layers.get("indices")
    if indices is not None and (not OmegaConf.is_list(indices) or not len(indices) or not all(
            isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in indices)):
        raise LordError(f"layers.indices={_plain(indices)!r} must be null (every block) or a non-empty list of "
                        "block numbers, e.g. layers.indices=[0,1] or layers.indices=[23]")
    if isinstance(cfg.data.seq_len, bool) or not isinstance(cfg.data.seq_len, int) or cfg.data.seq_len < 2:
        raise LordError(f"data.seq_len={cfg.data.seq_len!r} (budget.seq_len) must be an integer >= 2: a window "
                        "predicts its last seq_len - 1 tokens")
    if isinstance(cfg.data.min_chars, bool) or not isinstance(cfg.data.min_chars, int) or cfg.data.min_chars < 0:
        raise LordError(f"data.min_chars={cfg.data.min_chars!r} must be a non-negative integer")
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int):
        raise LordError(f"seed={cfg.seed!r} must be an integer")
    stages, evaluation = build_stages(cfg), get_evaluation(cfg.eval)
    for part in (*stages, evaluation):
        part.check_config()
    return stages, evaluation


def _plain(value):
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def _one_of(key: str, value, allowed) -> None:
    if value not in allowed:
        raise LordError(f"{key}={value!r} is unknown; allowed: {', '.join(allowed)}")


PUBLISHED = REPO / "results" / "published"


def check_provenance(cfg: DictConfig, git: dict | None) -> None:
    """``results/published`` takes results of committed code only (``paths.allow_dirty=true`` overrides, and the
    result records it): a published number must be re-measurable from a commit."""
    folder = Path(cfg.paths.results_dir).resolve()
    if git is None or not git["dirty"] or cfg.paths.get("allow_dirty"):
        return
    if folder == PUBLISHED or PUBLISHED in folder.parents:
        files = git["changed_files"]
        raise LordError(f"paths.results_dir={cfg.paths.results_dir} is the published results folder, but the code "
                        f"differs from commit {git['commit'][:12]} ({len(files)} file(s): "
                        f"{', '.join(files[:3])}{', ...' if len(files) > 3 else ''}); commit first, or write "
                        "elsewhere (the default results/), or set paths.allow_dirty=true to publish anyway "
                        "(recorded in the result)")


def preflight(cfg: DictConfig, stages, evaluation, git: dict | None = None) -> tuple[RunData, dict]:
    """What needs the model's config (on the meta device: no weights) and the data, but no weights:
    the selection and ranks, that the results folder is writable (and, for the published folder, that the
    code is committed: ``git``, the checkout's ``lord.environment.git_state``), that the data yields the windows
    asked for, and the run's identity. Returns (the run's data, its identity)."""
    check_provenance(cfg, git)
    _check_writable(Path(cfg.paths.results_dir) / str(cfg.experiment_name))
    data, identity, _ = _check_model_and_data(cfg, stages, evaluation)
    return data, identity


def _check_model_and_data(cfg: DictConfig, stages, evaluation) -> tuple[RunData, dict, object]:
    """The checks of ``preflight`` that write nothing: each stage on the weightless model, the data splits, the
    identity. Returns (the run's data, its identity, the weightless model)."""
    weightless = meta_model(load_config_only(cfg.model.name, cfg.paths.cache_dir))
    for stage in stages:
        stage.check(weightless)
    data = RunData(cfg, tokenizer=None)
    splits = {}
    if any(s.needs_calibration_data() for s in stages):
        splits["calibration"] = cfg.calibration.n_windows
    if evaluation.needs_validation_windows:
        splits["validation"] = cfg.eval.n_windows
    hashes = {split: data.check_split(split, n) for split, n in splits.items()}
    identity = run_identity(OmegaConf.to_container(cfg, resolve=True),
                            weights_id(cfg.model.name, cfg.paths.cache_dir), hashes)
    return data, identity, weightless


def dry_run(cfg: DictConfig, stages, evaluation, git: dict | None = None) -> dict:
    """``dry_run=true``: every check a run makes before it loads weights (``validate`` has run; here the
    provenance rule, each stage on the weightless model, the data splits), then what it would decompose -- each
    target with its shapes and rank -- and where its result would go. Loads no weights and writes nothing."""
    from lord.params import count_parameters
    from lord.ranks import RankSpec
    from lord.stages.calibrate import layer_selection
    from lord.structure import plan_targets

    check_provenance(cfg, git)
    _, identity, weightless = _check_model_and_data(cfg, stages, evaluation)
    decompose = next((s for s in stages if s.name == "decompose" and s.method.decomposes), None)
    targets = []
    if decompose is not None:
        from lord.compress import Compressor

        compressor = Compressor(weightless, **layer_selection(cfg), progress=False)
        budget = decompose.rank.unit == "budget"
        planned = (plan_targets(weightless, compressor.targets, RankSpec("rank", 1, force=True),
                                decompose.method.keeps_mean) if budget
                   else compressor.plan(decompose.method, decompose.rank))
        targets = [{"name": d.name, "kind": d.kind, "block": d.block, "d_in": d.d_in, "d_outs": list(d.d_outs),
                    "rank": None if budget else d.rank, "dense_params": d.dense_params,
                    "lowrank_params": None if budget else d.lowrank_params} for _, d in planned]
    blocks = weightless.config.get_text_config().num_hidden_layers
    return {"status": "ok", "outcome": "dry run", "path": str(result_path(cfg, evaluation, identity)),
            "model": str(cfg.model.name), "model_type": weightless.config.model_type, "blocks": blocks,
            "params": count_parameters(weightless), "stages": [s.name for s in stages], "eval": evaluation.name,
            "method": cfg.method.name, "rank": OmegaConf.to_container(cfg.rank, resolve=True), "targets": targets}


def describe_dry_run(plan: dict) -> str:
    """The lines a dry run prints: the model, the stages, every target with its rank, the result file."""
    r = plan["rank"]
    rank = f"rank.unit={r['unit']} rank.value={r['value']}" + (
        f" rank.allocation={r.get('allocation', 'uniform')}" if r["unit"] == "budget" else "")
    lines = [f"dry run (no weights loaded, nothing written): {plan['model']} ({plan['model_type']}, "
             f"{plan['blocks']} blocks, {plan['params']:,} parameters); stages {' -> '.join(plan['stages'])}; "
             f"evaluation {plan['eval']}"]
    targets = plan["targets"]
    if not targets:
        lines.append(f"  method={plan['method']} decomposes nothing")
    else:
        lines.append(f"  method={plan['method']} {rank}: {len(targets)} target(s)")
        width = max(len(t["name"]) for t in targets)
        for t in targets:
            shape = f"{t['d_in']} -> {'+'.join(map(str, t['d_outs']))}"
            rank_part = ("rank chosen from the spectra when the run computes the bases" if t["rank"] is None
                         else f"rank {t['rank']:>5}  {t['dense_params']:>12,} -> {t['lowrank_params']:,} params")
            lines.append(f"    {t['name']:<{width}}  {t['kind']:<16} {shape:<16} {rank_part}")
        dense = sum(t["dense_params"] for t in targets)
        if all(t["rank"] is not None for t in targets):
            low = sum(t["lowrank_params"] for t in targets)
            lines.append(f"  selected layers: {dense:,} -> {low:,} parameters ({100 * (1 - low / dense):.2f} % of "
                         f"them removed; negative: added)")
        else:
            lines.append(f"  selected layers: {dense:,} parameters; the budget removes {r['value']} % of them")
    lines.append(f"  result: {plan['path']}")
    return "\n".join(lines)


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        os.remove(temp_file(folder))
    except OSError as e:
        raise LordError(f"results folder {folder} is not writable ({e.strerror or e}); set paths.results_dir to a "
                        "folder you can write") from None


def rank_tag(cfg: DictConfig) -> str:
    r = cfg.rank
    tag = f"{r.unit}-{r.value:g}" if isinstance(r.value, (int, float)) else f"{r.unit}-{r.value}"
    if r.unit == "budget":  # budget-20-greedy: the criterion that allocated the ranks
        tag += f"-{r.get('allocation', 'uniform')}"
        if r.get("allocation") == "measured":  # budget-20-measured-grid30.70: its KL table's other settings
            tag += sensitivity_tag(cfg)
    return tag + (f"-round{r.round_to}" if r.round_to and int(r.round_to) > 1 else "")


def result_stem(cfg: DictConfig, evaluation) -> Path:
    """results/<experiment>/<model>/<method><setting tag>/<layers>[.blocks<i>]/<rank>[.<tag>] (no identity, no
    suffix); the setting tag says how calibration and stages differ from the profile's (``lord.naming``);
    ``.blocks<i>``: only these blocks (layers.indices, e.g. blocks0-2+7)."""
    model = str(cfg.model.name).replace("/", "--")
    dense = not METHODS.get(cfg.method.name).decomposes
    method = cfg.method.name + method_tag(cfg) + setting_tag(cfg)  # e.g. lord_meanfix-skip1, kfac-damping0.1
    blocks = block_label(cfg.layers.get("indices"))
    layers = "none" if dense else cfg.layers.name + (f".{blocks}" if blocks else "")
    tag = "dense" if dense else rank_tag(cfg)
    suffix = f".{evaluation.tag}" if evaluation.tag else ""
    return Path(cfg.paths.results_dir) / cfg.experiment_name / model / method / layers / f"{tag}{suffix}"


def result_path(cfg: DictConfig, evaluation, identity: dict) -> Path:
    stem = result_stem(cfg, evaluation)
    return stem.with_name(f"{stem.name}-{identity['id'][:8]}.json")

"""Adding seeds to a finished HumanEval run without generating its old seeds again.

``eval.seeds`` is part of a run's identity, so ``eval.seeds=[0,1,2,3,4]`` is a new run next to the finished
``eval.seeds=[0]`` one, with its own samples folder. Sample ``s`` of a task at seed ``k`` is drawn with its own
generator (``sample_seed(k, task, s)``), so seed 0's samples are the same in both runs. Before generating, a run
therefore looks at the finished results beside it (same folder) whose identity differs from its own *only* in
``eval.seeds``, and copies the samples and sandbox verdicts of every seed it shares with one of them. Copied
files are then read exactly as a resumed run reads its own (``generate_samples`` and ``execute_samples`` skip
what is there). What was copied, and from which result, goes into the result (``metrics.seeds_reused``).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

from lord.atomic import read_json, write_json_atomic

log = logging.getLogger(__name__)
RECORD = "seeds-reused.json"


def _without_seeds(inputs: dict) -> dict:
    """An identity's inputs with ``config.eval.seeds`` taken out."""
    config = dict(inputs.get("config") or {})
    config["eval"] = {k: v for k, v in (config.get("eval") or {}).items() if k != "seeds"}
    return {**inputs, "config": config}


def _seed_files(folder: Path, seed: int) -> list[Path]:
    """The samples and verdict files of one seed in a run's folder (``samples-<preset>-seed<k>[-chat].jsonl``)."""
    pattern = re.compile(rf"^(samples|results)-.+-seed{seed}(-chat)?\.jsonl$")
    return sorted(p for p in folder.glob("*.jsonl") if pattern.match(p.name))


def reuse_seeds(artifacts: Path, identity: dict | None, seeds) -> dict:
    """Copy into ``artifacts`` (this run's samples folder) the files of each seed in ``seeds`` that this run has
    not generated yet and that a finished sibling run with the same identity less ``eval.seeds`` has. Returns
    {seed: the sibling's identity prefix} for every seed copied, now or by an earlier start of this run."""
    if not identity or "inputs" not in identity:
        return _recorded(artifacts)
    artifacts = Path(artifacts)
    mine = _without_seeds(identity["inputs"])
    missing = [s for s in seeds if not any(p.name.startswith("samples-") for p in _seed_files(artifacts, s))]
    reused: dict = {}
    for result_file in sorted(artifacts.parent.glob("*.json")):
        if not missing:
            break
        if result_file.with_suffix("") == artifacts:
            continue
        try:
            result = json.loads(result_file.read_text())
        except (OSError, ValueError):
            continue
        other = result.get("identity") if isinstance(result, dict) else None
        if (not isinstance(other, dict) or result.get("status") != "ok" or not isinstance(other.get("inputs"), dict)
                or _without_seeds(other["inputs"]) != mine):
            continue
        folder = result_file.with_suffix("")
        for seed in list(missing):
            files = _seed_files(folder, seed)
            if seed not in (other["inputs"]["config"].get("eval") or {}).get("seeds", []) or not any(
                    p.name.startswith("samples-") for p in files):
                continue
            artifacts.mkdir(parents=True, exist_ok=True)
            for p in files:
                shutil.copyfile(p, artifacts / p.name)
            reused[seed] = str(other.get("id", ""))[:8]
            missing.remove(seed)
            log.info("seed %d: samples and verdicts copied from %s (the same run but for eval.seeds)", seed,
                     result_file)
    if reused:  # kept with the samples, so that a resumed run still says where its copied seeds came from
        write_json_atomic(artifacts / RECORD, {str(s): i for s, i in {**_recorded(artifacts), **reused}.items()})
    return {**_recorded(artifacts), **reused}


def _recorded(artifacts: Path) -> dict:
    """{seed: identity prefix} of the seeds copied into ``artifacts`` by an earlier start of this run."""
    known = read_json(Path(artifacts) / RECORD)
    return {int(s): i for s, i in known.items()} if isinstance(known, dict) else {}

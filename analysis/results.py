"""Turn result JSON files into one tidy DataFrame (status "ok" rows) plus a list of the rest."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

COLUMNS = ["experiment", "profile", "eval", "model", "gguf_file_type", "method", "calibration", "layers", "group", "rank_unit",
           "rank_value", "ranks", "perplexity", "dense_perplexity", "perplexity_increase_percent", "params_dense",
           "params_compressed", "params_reduction_percent", "n_tokens", "path"]


def _row(r: dict, path: Path) -> dict:
    cfg, comp = r["config"], r.get("compression") or {}
    return {
        "experiment": r["experiment"], "profile": r.get("profile"), "eval": r.get("eval", "perplexity"),
        "model": r["model"]["name"],
        "gguf_file_type": r["model"].get("gguf_file_type"), "method": cfg["method"]["name"],
        "calibration": cfg["calibration"]["mode"], "layers": cfg["layers"]["name"], "group": cfg["layers"]["group"],
        "rank_unit": cfg["rank"]["unit"] if comp else None, "rank_value": cfg["rank"]["value"] if comp else 0,
        "ranks": ",".join(map(str, comp.get("ranks", []))), "perplexity": r["metrics"].get("perplexity"),
        "dense_perplexity": r["metrics"].get("dense_perplexity"),
        "perplexity_increase_percent": r["metrics"].get("perplexity_increase_percent"),
        "params_dense": r["params"]["dense"], "params_compressed": r["params"]["compressed"],
        "params_reduction_percent": r["params"]["reduction_percent"], "n_tokens": r["metrics"].get("n_tokens"),
        "path": str(path),
    }


def load_results(root: str | Path) -> tuple[pd.DataFrame, list[dict]]:
    """(frame of ok runs, problems) — each problem names a file and why it was skipped, never a crash."""
    rows, problems = [], []
    for path in sorted(Path(root).rglob("*.json")):
        try:
            r = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            problems.append({"path": str(path), "reason": f"unreadable JSON ({e})"})
            continue
        if not isinstance(r, dict) or r.get("schema") != "lord.result/1":
            continue  # not a result file (e.g. a cache entry)
        if r.get("status") != "ok":
            problems.append({"path": str(path), "reason": f"status {r.get('status')}: {r.get('error')}"})
            continue
        try:
            rows.append(_row(r, path))
        except (KeyError, TypeError) as e:
            problems.append({"path": str(path), "reason": f"missing field {e}"})
    return pd.DataFrame(rows, columns=COLUMNS), problems

"""What the ``anchor`` stage did, layer by layer, from its record in each result (``stages.anchor.targets``): the
diagnosis of why the anchored fit made the model worse (docs/findings/beyond-the-paper.md)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pandas as pd

from lord.architectures import block_label

COLUMNS = ["model", "method", "budget %", "anchor settings", "fit", "layers fitted", "objective raised on calibration",
           "worse on the held-out batch", "blocks of those", "kept their decomposition", "ridge grid",
           "at the largest ridge",
           "most chosen ridge", "layers choosing it", "anchor s"]


def _blocks(blocks: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2, 5" (lord.architectures.block_label's runs, comma-separated)."""
    return block_label(blocks).removeprefix("blocks").replace("+", ", ")


def _settings(record: dict) -> str:
    """The record's fit settings: its order, output metric and ``keep_better`` ("block, euclidean" at the defaults)."""
    return ", ".join([record.get("order", "block"), record.get("metric", "euclidean")]
                     + (["keep_better"] if record.get("keep_better") else [])
                     + ([f"prior {record['prior']}"] if record.get("prior") else []))


def anchor_row(record: dict) -> dict:
    """One run's anchor record summarised. A layer's calibration objective -- the one the fit minimises, with its
    ridge term (``ridge_objective_*``) -- counts as raised when the fit leaves it above its value before the fit by
    more than float rounding (relative 1e-6)."""
    targets = record.get("targets") or []
    by_name = {t["name"]: t for t in targets}
    worse = [by_name[n]["block"] for n in record.get("held_out_worse", []) if n in by_name]
    ridges = record.get("ridges") or []
    chosen = Counter(t.get("ridge") for t in targets if t.get("ridge") is not None)
    top, top_n = chosen.most_common(1)[0] if chosen else (None, 0)
    return {"fit": record.get("fit"), "layers fitted": len(targets),
            "objective raised on calibration": sum(
                t.get("ridge_objective_after", t.get("objective_after"))
                > t.get("ridge_objective_before", t.get("objective_before")) * (1 + 1e-6) for t in targets),
            "worse on the held-out batch": len(worse), "blocks of those": _blocks(worse),
            "kept their decomposition": str(len(record["kept"])) if "kept" in record else "",  # "": not asked
            "ridge grid": ", ".join(f"{r:g}" for r in ridges),
            "at the largest ridge": chosen.get(max(ridges), 0) if ridges else None,
            "most chosen ridge": top, "layers choosing it": top_n, "anchor s": record.get("seconds")}


def anchor_fit_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run whose stages include ``anchor`` (read from its result file)."""
    rows = []
    for r in df.itertuples():
        result = json.loads(Path(r.path).read_text())
        record = (result.get("stages") or {}).get("anchor")
        if not isinstance(record, dict) or "targets" not in record:
            continue
        rows.append({"model": r.model, "method": f"{r.method} ({r.rank_unit})", "budget %": r.rank_value,
                     "anchor settings": _settings(record), **anchor_row(record)})
    return pd.DataFrame(rows, columns=COLUMNS).sort_values(["model", "method", "budget %"]).reset_index(drop=True)

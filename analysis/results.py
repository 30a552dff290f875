"""Turn result JSON files into one tidy DataFrame (status "ok" rows) plus a list of everything skipped."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from analysis.intervals import CI_MISSING, fmt, increase_percent, mean_interval, window_deltas
from lord.architectures import block_label
from lord.naming import intervention_tag

COLUMNS = ["experiment", "profile", "eval", "model", "model_source", "gguf_file_type", "method", "setting",
           "calibration", "layers", "blocks", "group", "rank_unit", "rank_value", "ranks", "perplexity",
           "dense_perplexity", "perplexity_increase_percent", "ppl_increase_ci", "ppl_increase_ci_low",
           "ppl_increase_ci_high", "window_deltas",
           "pass_at_1", "pass_at_1_ci_low", "pass_at_1_ci_high",
           "pass_at_10", "pass_at_10_ci_low", "pass_at_10_ci_high", "task_pass",
           "humaneval_preset", "humaneval_seeds", "max_new_tokens", "n_tasks",
           "relative_time_512", "relative_time_1024", "decode_speedup", "relative_size_params", "relative_size_disk",
           "params_dense", "params_compressed", "params_reduction_percent", "target_params_removed_percent",
           "skip_first", "corpus",
           "calibration_windows", "calibration_seq_len", "calibration_corpus", "calibration_draw",
           "n_tokens",
           "compression_seconds", "compression_peak_rss_mib", "dense_targets", "n_targets", "run_seconds", "device",
           "quant_bits", "prune", "model_bytes", "float_model_bytes", "model_bytes_on_disk", "linear_bytes",
           "float_linear_bytes", "nonzero_params", "lora_data", "lora_steps", "lora_tokens_per_s",
           "lora_peak_rss_mib", "lora_state_bytes", "lora_loss_first", "lora_loss_last",
           "validation_sha256",
           "identity", "variant", "path"]

# what makes two runs the same measurement, whichever preset ran them (``corpus``: the validation corpus;
# ``calibration_draw``: calibration windows drawn at random with that seed, a measurement of its own, not a variant;
# ``setting``: statistics without the first
# positions, extra stages -- lord.naming.intervention_tag; ``blocks``: layers.indices; ``humaneval_preset``: greedy
# and sampled HumanEval are two measurements of one point); ``variant`` names the
# config keys in which two runs of one such point differ, empty when they do not
SETTING = ["eval", "humaneval_preset", "model", "corpus", "method", "setting", "calibration", "layers", "blocks",
           "rank_unit", "rank_value", "quant_bits", "prune", "calibration_draw", "variant"]


# config keys in which two runs of one point may differ and still measure the same thing: a HumanEval run with more
# seeds holds a run with fewer (it copies their samples, lord.humaneval.seed_reuse); the tables take the one with
# the most seeds
SAME_POINT_KEYS = {"eval.seeds"}

# config keys added after results were published, with the value that reproduces those runs: a run without
# the key and one with this value are the same configuration (not a variant)
LATER_KEYS = {"stages": json.dumps(["calibrate", "decompose"]), "rank.allocation": json.dumps("uniform")}


def _rank_unit(rank: dict) -> str:
    """The rank's unit; a budget names its allocation criterion too (``budget-greedy``), as a point of its own."""
    return f"budget-{rank.get('allocation', 'uniform')}" if rank["unit"] == "budget" else rank["unit"]


def _metrics(r: dict) -> dict:
    m, ev = r["metrics"], r.get("eval", "perplexity")
    out = {}
    if ev == "perplexity":
        out.update(perplexity=m["perplexity"], dense_perplexity=m["dense_perplexity"],
                   perplexity_increase_percent=m["perplexity_increase_percent"], n_tokens=m.get("n_tokens"),
                   **_increase_interval(m))
    elif ev == "humaneval":
        p1 = m["pass@1"]
        p10 = m.get("pass@10", {})
        out.update(pass_at_1=p1["mean"], pass_at_1_ci_low=p1.get("ci_low"), pass_at_1_ci_high=p1.get("ci_high"),
                   pass_at_10=p10.get("mean"), pass_at_10_ci_low=p10.get("ci_low"),
                   pass_at_10_ci_high=p10.get("ci_high"), humaneval_preset=m["preset"]["name"],
                   humaneval_seeds=len(m.get("seeds") or [0]), max_new_tokens=m["preset"].get("max_new_tokens"),
                   n_tasks=m["n_tasks"], task_pass=_task_pass(m))
    elif ev == "speed":
        rel = m["relative"]
        by_len = {row["seq_len"]: row["relative_time_mean"] for row in rel["forward"]}
        out.update(relative_time_512=by_len.get(512, by_len.get(min(by_len)) if by_len else None),
                   relative_time_1024=by_len.get(1024, by_len.get(max(by_len)) if by_len else None),
                   decode_speedup=rel["decode"]["speedup"], relative_size_params=rel["relative_size_params"],
                   relative_size_disk=rel["relative_size_disk"])
    return out


def _task_pass(m: dict) -> dict | None:
    """Each task's share of passing samples in % (``metrics.per_task``: correct of n), the unit a paired pass@1
    comparison resamples; None for results without per-task counts."""
    per_task = m.get("per_task")
    if not per_task:
        return None
    return {task: 100.0 * c["correct"] / c["n"] for task, c in per_task.items() if c.get("n")}


def _increase_interval(m: dict) -> dict:
    """The per-window increases (``analysis.intervals.window_deltas``) and the 95 % interval of the perplexity
    increase over the validation windows; None for results from before per-window NLL was recorded."""
    if "window_nll" not in m or "dense_window_nll" not in m:
        return {"window_deltas": None, "ppl_increase_ci_low": None, "ppl_increase_ci_high": None,
                "ppl_increase_ci": CI_MISSING}
    deltas = window_deltas(m["window_nll"], m["dense_window_nll"], m["n_tokens"])
    ci = mean_interval(deltas)
    pct = increase_percent(ci) if ci is not None else None
    return {"window_deltas": deltas, "ppl_increase_ci_low": pct.low if pct else None,
            "ppl_increase_ci_high": pct.high if pct else None, "ppl_increase_ci": fmt(pct)}


def _row(r: dict, path: Path) -> dict:
    cfg, comp = r["config"], r.get("compression") or {}
    val = (r.get("data") or {}).get("validation") or {}
    return {
        "experiment": r["experiment"], "profile": r.get("profile"), "eval": r.get("eval", "perplexity"),
        "model": r["model"]["name"], "model_source": r["model"].get("source"),
        "gguf_file_type": r["model"].get("gguf_file_type"),
        "method": cfg["method"]["name"], "setting": intervention_tag(cfg), "calibration": cfg["calibration"]["mode"],
        "layers": cfg["layers"]["name"],
        "blocks": block_label(cfg["layers"].get("indices")), "group": cfg["layers"]["group"],
        "rank_unit": _rank_unit(cfg["rank"]) if comp else None,
        "rank_value": cfg["rank"]["value"] if comp else 0.0, "ranks": ",".join(map(str, comp.get("ranks", []))),
        **_metrics(r),
        "params_dense": r["params"]["dense"], "params_compressed": r["params"]["compressed"],
        "params_reduction_percent": r["params"]["reduction_percent"],
        "target_params_removed_percent": _target_removed(comp),
        "dense_targets": (len((comp.get("allocation") or {}).get("dense_targets", []))
                          if comp.get("allocation") else None),
        "n_targets": None if comp.get("neurons") else comp.get("n_targets"),  # resized MLPs are in neither count
        "skip_first": cfg["calibration"].get("skip_first", 0),
        **_calibration(cfg), **_compression_cost(r), **_composed(r), **_run_cost(r),
        "validation_sha256": val.get("content_sha256"), "identity": (r.get("identity") or {}).get("id"),
        "variant": "", "path": str(path),
    }


def _corpus_name(data: dict, key: str) -> str | None:
    """A corpus by name (``stdlib``, ``the-stack-smol``); a folder or file (data=folder) by ``folder:<its name>``."""
    if data.get("name") == "folder" and data.get(key):
        return f"folder:{Path(str(data[key])).name}"
    return data.get("name")


def _calibration(cfg: dict) -> dict:
    """What calibration read: windows, tokens per window, corpus (data=stdlib's calibration_corpus, else the
    data source)."""
    cal, data = cfg["calibration"], cfg.get("data") or {}
    if data.get("name") == "stdlib":
        corpus = data.get("calibration_corpus", "stdlib")
    else:
        corpus = _corpus_name(data, "calibration_path")
    return {"corpus": _corpus_name(data, "path"), "calibration_windows": cal.get("n_windows"),
            "calibration_seq_len": cal.get("seq_len") or data.get("seq_len"), "calibration_corpus": corpus,
            "calibration_draw": cal.get("draw")}


NOT_COMPRESSION = ("load_s", "baseline_s", "eval_s", "save_s")  # timings of a run that are not its stages


def _compression_cost(r: dict) -> dict:
    """Seconds of the compression stages (statistics and bases from the cache when the run's ``reused`` says so)
    and the highest resident memory during any of them (results written before stage memory was recorded: None)."""
    timings = r.get("timings") or {}
    seconds = sum(v for k, v in timings.items() if k not in NOT_COMPRESSION) if timings else None
    peaks = [m["rss_peak_mib"] for m in (r.get("stage_memory") or {}).values() if "rss_peak_mib" in m]
    return {"compression_seconds": seconds, "compression_peak_rss_mib": max(peaks) if peaks else None}


def _run_cost(r: dict) -> dict:
    """Seconds of the whole run as its ``timings`` recorded them (load, baseline, stages, evaluation, save) and
    where it ran: the GPU's name, else ``CPU (<n> cores)``."""
    timings = r.get("timings") or {}
    hw = (r.get("environment") or {}).get("hardware") or {}
    device = hw.get("gpu") if hw.get("cuda") and hw.get("gpu") else (
        f"CPU ({hw['cpu_count']} cores)" if hw.get("cpu_count") else None)
    return {"run_seconds": sum(v for v in timings.values() if isinstance(v, (int, float))) if timings else None,
            "device": device}


def _composed(r: dict) -> dict:
    """What the ``quantize``, ``prune`` and ``lora`` stages did (stage records; None when the run had no such
    stage)."""
    stages = r.get("stages") or {}
    q, p, lo = stages.get("quantize") or {}, stages.get("prune") or {}, stages.get("lora") or {}
    prune = None
    if p:
        prune = p["pattern"] if p["pattern"] != "unstructured" else f"{100 * p['sparsity']:g}%"
    return {"quant_bits": q.get("bits"), "prune": prune, "model_bytes": q.get("model_bytes"),
            "float_model_bytes": q.get("model_bytes_before"), "linear_bytes": q.get("linear_bytes_after"),
            "float_linear_bytes": q.get("linear_bytes_before"), "model_bytes_on_disk": q.get("model_bytes_on_disk"),
            "nonzero_params": p.get("nonzero_params"), "lora_data": (lo.get("settings") or {}).get("data"),
            "lora_steps": lo.get("steps"), "lora_tokens_per_s": lo.get("tokens_per_s"),
            "lora_peak_rss_mib": (lo.get("memory") or {}).get("rss_peak_mib"),
            "lora_state_bytes": lo.get("state_bytes"),
            "lora_loss_first": lo.get("loss_first"), "lora_loss_last": lo.get("loss_last")}


def _target_removed(comp: dict) -> float | None:
    """% of the chosen layers' own parameters removed (negative: added), None when nothing was decomposed."""
    if comp.get("allocation"):  # rank.unit=budget: of the whole selection, matrices left dense included
        return comp["allocation"]["removed_percent"]
    dense, low = comp.get("target_dense_params"), comp.get("target_lowrank_params")
    return 100 * (1 - low / dense) if dense else None


def _flat(d, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v, sort_keys=True, default=str)
    return out


def _mark_variants(rows: list[dict], flats: list[dict]) -> list[dict]:
    """Give runs of one point that differ in config a ``variant`` naming the differing keys and values; returns
    one note per such point. Nothing is averaged or dropped: each variant stays its own row."""
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(tuple(r.get(k) for k in SETTING if k != "variant"), []).append(i)
    notes = []
    flats = [{k: v for k, v in f.items() if k not in SAME_POINT_KEYS} for f in flats]
    for point, idx in groups.items():
        if len({json.dumps(flats[i], sort_keys=True) for i in idx}) < 2:
            continue
        keys = sorted({k for i in idx for k in flats[i]})
        differ = [k for k in keys if len({flats[i].get(k, LATER_KEYS.get(k)) for i in idx}) > 1]
        for i in idx:
            rows[i]["variant"] = ", ".join(f"{k}={flats[i].get(k, 'absent')}" for k in differ)
        named = dict(zip([k for k in SETTING if k != "variant"], point))
        if named.get("humaneval_preset") is None:  # a perplexity or speed point
            named.pop("humaneval_preset", None)
        notes.append({"point": named, "keys": differ,
                      "paths": [rows[i]["path"] for i in idx]})
    return notes


def load_results(root: str | Path) -> tuple[pd.DataFrame, list[dict]]:
    """(frame of ok runs, problems). Each problem names a file and why it was skipped: unreadable or
    truncated JSON, a failed run, a result missing fields. Nothing crashes and nothing is dropped silently.
    Runs of one point (``SETTING``) whose configs differ get a ``variant`` naming the differing keys, and
    ``frame.attrs["variants"]`` lists each such point; a folder under ``root`` named ``published`` is another
    results folder and is not read."""
    from lord.identity import numeric_config

    rows, flats, problems = [], [], []
    root = Path(root)
    for path in sorted(root.rglob("*.json")):
        inner = path.relative_to(root).parts[:-1]
        if "wandb" in inner or "published" in inner or ".hydra" in inner:  # not runs, or another results folder
            continue
        try:
            r = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            problems.append({"path": str(path), "reason": f"unreadable JSON ({e})"})
            continue
        if not isinstance(r, dict) or r.get("schema") != "lord.result/1":
            if isinstance(r, dict) and "benchmark" in r:
                continue  # benchmark outputs live next to results but are not runs
            problems.append({"path": str(path), "reason": "not a lord result (no schema 'lord.result/1')"})
            continue
        if r.get("status") != "ok":
            problems.append({"path": str(path), "reason": f"status {r.get('status')}: {r.get('error')}"})
            continue
        try:
            rows.append(_row(r, path))
            flats.append(_flat(numeric_config(r["config"])))
        except (KeyError, TypeError) as e:
            problems.append({"path": str(path), "reason": f"missing field {e}"})
    variants = _mark_variants(rows, flats)
    frame = pd.DataFrame(rows, columns=COLUMNS)
    frame.attrs["variants"] = variants
    return frame, problems


def for_artefact(df: pd.DataFrame, experiment: str) -> pd.DataFrame:
    """The rows of the preset that makes an artefact (``conf/experiment/<experiment>.yaml``) when the folder
    holds any, else every row: a published folder mixes presets, a user's own folder may hold only ad-hoc runs."""
    own = df[df.experiment == experiment]
    return own if len(own) else df


def without_lone_variants(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with ``variant`` cleared where a point has one row in ``df``: variants are marked over every result
    (another preset may have run the same point with, say, more calibration windows), and a table of one preset's
    rows names a variant only where it shows more than one."""
    if "variant" not in df or not len(df):
        return df
    keys = [k for k in SETTING if k != "variant" and k in df]
    lone = df.groupby(keys, dropna=False)["variant"].transform("size") == 1
    return df.assign(variant=df["variant"].where(~lone, ""))


def same_models_as(df: pd.DataFrame, experiment: str) -> pd.DataFrame:
    """Every run of the model(s) that preset ran, from any preset, one row per setting (the preset's own row
    first): Fig. 2's `all` line is the same model's all-layer runs of Fig. 1."""
    own = for_artefact(df, experiment)
    d = df[df.model.isin(set(own.model))]
    d = d.assign(_own=d.experiment != experiment).sort_values("_own", kind="stable")
    # frames built by hand may lack variant
    return d.drop_duplicates([k for k in SETTING if k in d]).drop(columns="_own")


def load_speed_benchmarks(root: str | Path) -> tuple[pd.DataFrame, list[dict]]:
    """(rows, problems): rows (``eval == "speed"``) from ``speed-from-config-*.json`` benchmark files, Figure 3
    measured on a model built from its config with random weights (``experiments.benchmarks.speed_from_config``);
    a file that cannot be read is listed in problems with the reason. These rows feed a figure of their own,
    never the run tables."""
    rows, problems = [], []
    for path in sorted(Path(root).glob("speed-from-config-*.json")):
        try:
            b = json.loads(path.read_text())
            hw = b["environment"].get("hardware", {})
            for r in b["per_rank"]:
                rows.append({"experiment": "speed_from_config", "eval": "speed", "model": b["model_config"],
                             "layers": "+".join(b["kinds"]), "rank_unit": "reduction", "rank_value": r["reduction"],
                             "ranks": ",".join(map(str, r["ranks"])), "relative_time_512": r.get("relative_time_512"),
                             "relative_time_1024": r.get("relative_time_1024"), "decode_speedup": r["decode_speedup"],
                             "relative_size_params": r["relative_size_params"], "relative_size_disk": None,
                             "device": hw.get("gpu") or b["device"], "dtype": b["dtype"], "path": str(path)})
        except (OSError, ValueError, KeyError, TypeError) as e:
            problems.append({"path": str(path), "reason": f"unreadable speed benchmark ({type(e).__name__}: {e})"})
    return pd.DataFrame(rows, columns=[*COLUMNS, "dtype"]), problems  # COLUMNS has "device"

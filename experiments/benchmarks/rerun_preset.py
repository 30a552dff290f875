"""Rerun one point of a preset with today's code and compare it with its committed result.

    python -m experiments.benchmarks.rerun_preset --preset main --point 1
    python -m experiments.benchmarks.rerun_preset --preset fig3_speed --point 2 --published results/published

The point is composed exactly as the sweeper composes it (``hydra_plugins/lord_sweeper.expand``), run into a
fresh results folder (caches are shared: they are keyed by content), and compared with the file at the same
relative path under ``--published``. Perplexity: relative difference (tolerance ``PPL_RTOL``); parameter
counts: exact; HumanEval: the per-task verdicts, one by one; speed: sizes exactly, times reported (timings are
not reproducible to better than the machine's noise). Writes results/benchmarks/rerun-<preset>-<point>.json
and exits 1 when the rerun does not match.

Time: ~7 min on a 2-core CPU, measured (--preset main --point 1); ~17 min on a 2-core CPU, measured (--preset
fig3_speed --point 2)
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from experiments.benchmarks.common import parser, write
from experiments.cli import CONF, guarded
from experiments.records import result_stem, validate
from hydra_plugins.lord_sweeper.lord_sweeper import expand
from lord.errors import LordError

PPL_RTOL = 1e-4  # float32 forward passes on one machine type; measured differences are ~1e-6 (tests/golden)


def compare(new: dict, old: dict) -> dict:
    out = {"params_equal": new["params"]["compressed"] == old["params"]["compressed"]
           and new["params"]["dense"] == old["params"]["dense"]}
    ev = new.get("eval", "perplexity")
    m, o = new["metrics"], old["metrics"]
    if ev == "perplexity":
        out["perplexity"] = {"rerun": m["perplexity"], "published": o["perplexity"],
                             "rel_diff": abs(m["perplexity"] / o["perplexity"] - 1)}
        out["dense_perplexity_rel_diff"] = abs(m["dense_perplexity"] / o["dense_perplexity"] - 1)
        out["matches"] = bool(out["params_equal"] and out["perplexity"]["rel_diff"] <= PPL_RTOL
                              and out["dense_perplexity_rel_diff"] <= PPL_RTOL)
    elif ev == "humaneval":
        differ = sorted(t for t in set(m["per_task"]) | set(o["per_task"])  # {task: {"correct": c, "n": n}}
                        if m["per_task"].get(t) != o["per_task"].get(t))
        out["humaneval"] = {"tasks": len(m["per_task"]), "verdicts_differ": differ,
                            "pass@1": {"rerun": m["pass@1"]["mean"], "published": o["pass@1"]["mean"]}}
        out["matches"] = bool(out["params_equal"] and not differ and len(m["per_task"]) == len(o["per_task"]))
    else:
        rel = lambda r: {x["seq_len"]: x["relative_time_mean"] for x in r["relative"]["forward"]}  # noqa: E731
        out["speed"] = {"relative_time_rerun": rel(m), "relative_time_published": rel(o),
                        "decode_speedup": {"rerun": m["relative"]["decode"]["speedup"],
                                           "published": o["relative"]["decode"]["speedup"]},
                        "bytes_on_disk_equal": m["compressed"]["bytes_on_disk"] == o["compressed"]["bytes_on_disk"]}
        out["matches"] = bool(out["params_equal"] and out["speed"]["bytes_on_disk_equal"])
        out["note"] = "times are compared by eye: they carry the machine's noise (docs/findings/fig3.md)"
    return out


def _published(stem: Path) -> Path:
    """The committed result of a point: ``<stem>-<id8>.json``, or ``<stem>.json`` (the layout before run
    identities); one line when there is none or more than one."""
    found = sorted(stem.parent.glob(f"{stem.name}-????????.json"))
    found += [p for p in [stem.with_name(stem.name + ".json")] if p.is_file()]
    if len(found) != 1:
        raise LordError(f"{'no' if not found else len(found)} committed result(s) for {stem}: "
                        f"{', '.join(map(str, found)) or 'run the preset first'}")
    return found[0]


def main():
    from experiments.run import run

    ap = parser(__doc__, model=None)
    ap.add_argument("--preset", required=True)
    ap.add_argument("--point", type=int, required=True, help="index into the preset's points (plus first)")
    ap.add_argument("--published", type=Path, default=Path("results/published"))
    args = ap.parse_args()
    cfgs = expand(str(CONF), args.preset)
    if not 0 <= args.point < len(cfgs):
        raise LordError(f"--point {args.point} is out of range: preset {args.preset!r} has points 0..{len(cfgs) - 1}")
    with tempfile.TemporaryDirectory() as tmp:
        cfg = expand(str(CONF), args.preset, [f"paths.results_dir={tmp}"])[args.point]
        published_file = _published(args.published / result_stem(cfg, validate(cfg)[1]).relative_to(tmp))
        new = run(cfg)
    if new["status"] != "ok":
        raise LordError(f"the rerun failed: {new['error']}")
    old = json.loads(published_file.read_text())
    cmp = compare(new, old)
    write(f"rerun-{args.preset}-{args.point}", {
        "preset": args.preset, "point": args.point, "published_file": str(published_file),
        "published_commit": old["environment"].get("git_commit"), "timings": new["timings"], **cmp})
    return 0 if cmp["matches"] else 1


if __name__ == "__main__":
    guarded(main)

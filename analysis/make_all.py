"""Regenerate every table and figure from the result files, with the paper's numbers side by side.

    python -m analysis.make_all                       # results/ -> results/analysis/
    python -m analysis.make_all --results R --out O [--benchmarks results/benchmarks] [--docs PAGE_OR_FOLDER ...]

The published set: ``--results results/published --out docs/generated --benchmarks results/benchmarks --docs
README.md docs`` (``--docs``: then fill the pages' generated regions from ``--out``, ``analysis/docs_regions.py``).

It reads only the folders it is given (a ``published/`` folder inside ``--results`` is another results folder,
and is not read) and no cache. Malformed, truncated or failed result files are listed (file and reason) and
skipped. Which tables and figures it writes: those the presets with results in the folder name
(``hydra.sweeper.artefacts``), plus ``analysis.artefacts.ALWAYS``, and ``FOR_ANY_RESULTS`` for results of an
experiment that no preset names (an ad-hoc sweep); each is a registered function (``analysis/artefacts.py``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from analysis import docs_regions
from analysis.artefacts import ALWAYS, ARTEFACTS, FOR_ANY_RESULTS, Analysis
from analysis.results import load_results
from lord.errors import LordError

CONF = Path(__file__).resolve().parents[1] / "conf"


def preset_artefacts(conf_dir: Path = CONF / "experiment") -> dict[str, list[str]]:
    """``{experiment_name: [artefact names]}`` read from the presets' ``hydra.sweeper.artefacts``."""
    out: dict[str, list[str]] = {}
    for f in sorted(conf_dir.glob("*.yaml")):
        preset = yaml.safe_load(f.read_text()) or {}
        names = ((preset.get("hydra") or {}).get("sweeper") or {}).get("artefacts") or []
        out.setdefault(preset.get("experiment_name", f.stem), [])
        out[preset.get("experiment_name", f.stem)] += [n for n in names if n not in out[preset.get("experiment_name",
                                                                                                    f.stem)]]
    return out


def artefacts_for(experiments, presets: dict[str, list[str]]) -> list[str]:
    """The artefacts to make for results of ``experiments``: ``ALWAYS`` plus each one's preset list
    (``FOR_ANY_RESULTS`` for an experiment no preset names), in the order the artefacts are registered."""
    wanted = set(ALWAYS) | {name for e in experiments for name in presets.get(e, FOR_ANY_RESULTS)}
    unknown = sorted(n for n in wanted if n not in ARTEFACTS)
    if unknown:
        raise LordError(f"a preset lists unknown analysis artefact(s) {unknown}; registered: "
                        f"{', '.join(ARTEFACTS.names())}")
    return [n for n in ARTEFACTS.registration_order() if n in wanted]


def make_all(results: Path, out: Path, benchmarks: Path | None = None) -> dict:
    everything, problems = load_results(results)
    out.mkdir(parents=True, exist_ok=True)
    analysis = Analysis(everything, out, benchmarks, problems)
    names = artefacts_for(sorted(everything.experiment.unique()) if len(everything) else [], preset_artefacts())
    written: list[Path] = []
    for name in names:
        written += ARTEFACTS.get(name)(analysis)
    problems = analysis.problems
    standard = everything.index.isin(analysis.standard.index)
    index = ["# Regenerated tables and figures", "", f"{len(everything)} results from `{results}`.", ""]
    index += [f"- [{p.name}]({p.name})" for p in written]
    if (~standard).any():
        index += ["", f"{int((~standard).sum())} runs with statistics without the first positions, extra stages, "
                      "a subset of blocks, a parameter budget, randomly drawn calibration windows, or a saved "
                      "checkpoint loaded again are in the diagnosis, pareto, verdict and their own experiments' "
                      "tables only."]
    variants = everything.attrs.get("variants", [])
    if variants:  # runs of one point with different configs: each kept as its own row/line, never averaged
        index += ["", "## Points run with different configurations", ""]
        index += [f"- {v['point']}: differ in {', '.join(v['keys'])} ({len(v['paths'])} runs)" for v in variants]
    for v in variants:
        print(f"note: {len(v['paths'])} runs of {v['point']} differ in {', '.join(v['keys'])}", file=sys.stderr)
    if problems:
        index += ["", "## Skipped result files", ""] + [f"- `{p['path']}`: {p['reason']}" for p in problems]
    (out / "index.md").write_text("\n".join(index) + "\n")
    for p in problems:
        print(f"skipped {p['path']}: {p['reason']}", file=sys.stderr)
    print(f"{len(everything)} results -> {len(written)} files in {out} (see {out / 'index.md'})")
    return {"frame": everything, "problems": problems, "written": written}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=Path("results"))
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--benchmarks", type=Path, default=None,
                    help="folder of speed-from-config-*.json files (Figure 3 at the paper's scale), e.g. "
                         "results/benchmarks; none is read unless given")
    ap.add_argument("--docs", nargs="+", type=Path, default=None, metavar="PAGE_OR_FOLDER",
                    help="then fill the generated regions of these pages (or of every page in these folders) from "
                         "--out, e.g. --docs README.md docs (analysis/docs_regions.py)")
    args = ap.parse_args(argv)
    if not args.results.is_dir():
        print(f"error: results folder {args.results} does not exist; run experiments first", file=sys.stderr)
        return 2
    out = args.out or args.results / "analysis"
    make_all(args.results, out, args.benchmarks)
    if args.docs:
        try:
            regions = docs_regions.fill_pages(args.docs, out)
        except LordError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        for line in docs_regions.report(regions, check=False):
            print(line)
        print(f"{len(regions)} generated regions in {', '.join(map(str, args.docs))} filled from {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

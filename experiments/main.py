"""The main job: run the sweep listed in an experiment preset, then print a table and draw a figure.

    python -m experiments.main                         # conf/experiment/main.yaml on the offline default
    python -m experiments.main profile=quick model=smollm2-135m   # any override applies to every run

Each run is an ordinary ``experiments.run`` job (one JSON each, skipped if already done).
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from analysis.rank_sweep import plot_rank_sweep, rank_sweep_table
from analysis.results import load_results
from experiments.cli import guarded
from experiments.pipeline import headline
from experiments.run import run

CONF = str(Path(__file__).resolve().parents[1] / "conf")


def sweep_points(spec) -> list[list[str]]:
    """A preset's ``sweep``: a list of override lists, or ``{grid: {key: [values]}, plus: [[overrides]]}``
    whose grid is expanded as a cartesian product; ``plus`` runs (baselines such as the dense model) go first,
    so a sweep cut short still has its reference."""
    if spec is None:
        return [[]]
    if isinstance(spec, list):
        return [list(p) for p in spec]
    grid = spec.get("grid") or {}
    points = [[f"{k}={v}" for k, v in zip(grid, combo)] for combo in itertools.product(*grid.values())]
    return [list(p) for p in spec.get("plus") or []] + (points or [[]])


def sweep_configs(preset: str, overrides: list[str]):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        base = compose("config", overrides=[f"+experiment={preset}", *overrides])
        spec = OmegaConf.to_container(base.sweep) if "sweep" in base else None
        return [compose("config", overrides=[f"+experiment={preset}", *point, *overrides])
                for point in sweep_points(spec)]


def main(argv: list[str]) -> int:
    preset = "main"
    for arg in list(argv):
        if arg.lstrip("+").startswith("experiment="):
            preset = arg.split("=", 1)[1]
            argv.remove(arg)
    cfgs = sweep_configs(preset, argv)
    results = [run(cfg) for cfg in cfgs]
    failed = [r for r in results if r.get("status") != "ok"]
    out_dir = Path(cfgs[0].paths.results_dir) / cfgs[0].experiment_name
    df, problems = load_results(out_dir)
    if len(df) and (df["eval"] == "perplexity").any():
        table = rank_sweep_table(df[df["eval"] == "perplexity"])
        print(table.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
        (out_dir / "summary.md").write_text(table.to_markdown(index=False, floatfmt=".4g") + "\n")
        figs = plot_rank_sweep(df[df["eval"] == "perplexity"], out_dir / "rank_sweep",
                               title=f"{cfgs[0].experiment_name}, profile={cfgs[0].get('profile_name')}")
        print(f"table: {out_dir / 'summary.md'}  figure: {figs[0]}")
    for r in results:
        if r.get("status") == "ok" and r.get("eval") != "perplexity":
            print(f"{r['path']}: {headline(r)}")
    for p in problems:
        print(f"skipped {p['path']}: {p['reason']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    guarded(lambda: main(sys.argv[1:]))

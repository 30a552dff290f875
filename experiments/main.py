"""The main job: a preset's sweep, then its report (table and figure).

    python -m experiments.main                          # conf/experiment/main.yaml on the offline default
    python -m experiments.main experiment=fig1_rank_sweep profile=quick model=smollm2-135m

is exactly ``python -m experiments.run -m +experiment=<preset> [overrides]``: Hydra's multirun with the lord
sweeper (hydra_plugins/lord_sweeper), so every override applies to every point, a killed sweep resumes, and
any launcher works. Exit status 0 when every run is ok, 1 when any failed, 2 for a config error.
"""

from __future__ import annotations

import sys

from experiments.cli import guarded


def multirun_argv(argv: list[str]) -> list[str]:
    preset = "main"
    rest = []
    for arg in argv:
        if arg.lstrip("+").startswith("experiment="):
            preset = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    return ["-m", f"+experiment={preset}", *rest]


def main() -> None:
    from experiments import run

    sys.argv = [sys.argv[0], *multirun_argv(sys.argv[1:])]
    run.main()


def cli() -> None:
    """The ``lord-main`` console script."""
    guarded(main)


if __name__ == "__main__":
    cli()

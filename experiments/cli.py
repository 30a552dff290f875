"""Command-line checks that run before Hydra, so a typo gives one line naming the key and the choices."""

from __future__ import annotations

import sys
from pathlib import Path

from lord import logs
from lord.errors import LordError

CONF = Path(__file__).resolve().parents[1] / "conf"


def check_overrides(argv: list[str], conf: Path = CONF) -> None:
    """Reject ``group=option`` overrides whose option file does not exist (sweeps: every comma-separated one)."""
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, value = arg.lstrip("+~").split("=", 1)
        group = conf / key
        if key.startswith("hydra") or not group.is_dir():
            continue
        choices = sorted(p.stem for p in group.glob("*.yaml"))
        for option in value.split(","):
            if option and option not in choices:
                raise LordError(f"{key}={option!r} is unknown; allowed: {', '.join(choices)}")


def guarded(main_fn) -> None:
    """Run an entry point: user errors become one line on stderr and exit status 2."""
    logs.configure()
    try:
        check_overrides(sys.argv[1:])
        result = main_fn()
    except LordError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if isinstance(result, int):
        sys.exit(result)

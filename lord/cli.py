"""The lord command: what one does with a saved compressed model outside an experiment.

    lord export --merge DIR OUT     a dense checkpoint (W = B·A, bias folded) that loads with no remote code
    lord card DIR                   print the model card of a saved model or of its export
    lord ls [--json]                every experiment preset and benchmark: what it regenerates, points, time

Experiments have their own commands (``lord-run``, ``lord-main``, ``lord-analysis``; the same as
``python -m experiments.run`` etc.). Errors a user can fix are one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lord import logs
from lord.errors import LordError


def _export(args) -> int:
    from lord.export import export_merged

    if not args.merge:
        raise LordError("lord export needs --merge (the only export there is: a dense checkpoint, W = B·A)")
    report = export_merged(args.directory, args.out)
    print(f"{args.out}: dense {report['architecture']} checkpoint, {report['n_params']:,} parameters, "
          f"{report['merged_targets']} targets merged, logits within {report['max_logit_error_relative']:.1e} "
          "of the compressed model's")
    return 0


def _card(args) -> int:
    from lord.checkpoint import read_structure
    from lord.model_card import card_of, is_export

    if not is_export(args.directory):
        read_structure(args.directory)  # a lord checkpoint, or one line saying why not
    print(card_of(args.directory))
    return 0


def _ls(args) -> int:
    from lord.presets import runnables, table

    items = runnables()
    print(json.dumps([r.to_json() for r in items], indent=2) if args.json else table(items).rstrip("\n"))
    return 0


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="lord", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export", help="write a dense checkpoint of a compressed one")
    ex.add_argument("--merge", action="store_true", help="merge each low-rank pair into one dense matrix")
    ex.add_argument("directory", type=Path, help="a directory written by lord.save_compressed")
    ex.add_argument("out", type=Path, help="where the dense checkpoint goes (replaced atomically)")
    ex.set_defaults(fn=_export)
    card = sub.add_parser("card", help="print the model card of a saved model or of its export")
    card.add_argument("directory", type=Path)
    card.set_defaults(fn=_card)
    ls = sub.add_parser("ls", help="list the experiment presets and benchmarks: artefact, points, wall time")
    ls.add_argument("--json", action="store_true", help="one JSON list (kind, name, command, summary, time, "
                    "timings, points, analysis)")
    ls.set_defaults(fn=_ls)
    return ap


def main(argv: list[str] | None = None) -> int:
    logs.configure()
    args = parser().parse_args(argv)
    try:
        return args.fn(args)
    except LordError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""Fill the documentation's generated regions from the generated tables, so no page retypes a number.

A page (a ``docs/`` page or the README) marks a region with the name of a file in the generated folder::

    <!-- table: table_pareto.md -->
    (whatever is here is replaced)
    <!-- /table -->

``fill`` puts the file's text between the two markers, with one blank line on each side (so the table renders on a
code host and on the mkdocs site alike). Markers inside fenced code blocks are examples, and are left alone. A
region whose file does not exist yet is left as it is and reported as missing: a page can name a table before the
analysis that writes it exists. ``--check`` changes nothing and lists the regions that differ from their file::

    python -m analysis.docs_regions [--check] [--generated docs/generated] [README.md docs ...]

``python -m analysis.make_all ... --out docs/generated --docs README.md docs`` fills the pages after writing the
tables. Exit status: 0, or 1 with ``--check`` when a region is out of date, 2 for a malformed region (one line
naming the page and line).
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from lord.errors import LordError

OPEN = re.compile(r"^<!-- table: (?P<name>[^ ]+) -->$")
CLOSE = "<!-- /table -->"
FENCE = re.compile(r"^(`{3,}|~{3,})")  # a fenced code block opens (its closing line is the same run of characters)
DEFAULT_PAGES = ("README.md", "docs")
DEFAULT_GENERATED = Path("docs/generated")


@dataclass(frozen=True)
class Region:
    page: Path
    line: int  # 1-based line of the opening marker
    name: str  # the generated file it holds
    status: str  # "up to date", "out of date" (before filling), "missing" (no such generated file)


def region_body(text: str) -> list[str]:
    """The lines a region holds for a generated file's ``text``: a blank line, the text, a blank line."""
    return ["", *text.rstrip("\n").split("\n"), ""]


def fill(page_text: str, generated: Path, page: Path = Path("<page>")) -> tuple[str, list[Region]]:
    """(the page with every region holding its generated file, each region's status before filling)."""
    lines = page_text.split("\n")
    out: list[str] = []
    regions: list[Region] = []
    fence = None  # the fence that opened the code block we are in: markers there are examples, not regions
    i = 0
    while i < len(lines):
        line = lines[i]
        out.append(line)
        stripped = line.strip()
        if fence is None and FENCE.match(stripped):
            fence = FENCE.match(stripped)[1]
        elif fence is not None and stripped.startswith(fence) and not stripped.strip(fence[0]):
            fence = None
        opening = OPEN.match(stripped) if fence is None else None
        if not opening:
            if fence is None and stripped == CLOSE:
                raise LordError(f"{page}:{i + 1}: '{CLOSE}' without an opening '<!-- table: <file> -->' before it")
            i += 1
            continue
        name = opening["name"]
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == CLOSE or OPEN.match(lines[j].strip())),
                   None)
        if end is None or lines[end].strip() != CLOSE:
            raise LordError(f"{page}:{i + 1}: region '{name}' is not closed; end it with a line '{CLOSE}'")
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise LordError(f"{page}:{i + 1}: region '{name}' must name a file inside the generated folder, "
                            "e.g. <!-- table: table_pareto.md -->")
        body = lines[i + 1:end]
        source = generated / name
        if source.is_file():
            wanted = region_body(source.read_text())
            status = "up to date" if body == wanted else "out of date"
            body = wanted
        else:
            status = "missing"
        regions.append(Region(page, i + 1, name, status))
        out += body + [lines[end]]
        i = end + 1
    return "\n".join(out), regions


def pages_under(paths, generated: Path) -> list[Path]:
    """The Markdown pages named by ``paths`` (files, or folders searched recursively), without the generated
    folder's own files."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(q for q in p.rglob("*.md") if generated.resolve() not in q.resolve().parents)
        elif p.is_file():
            found.append(p)
        else:
            raise LordError(f"{p} is neither a page nor a folder of pages")
    return found


def fill_pages(paths, generated: Path, check: bool = False) -> list[Region]:
    """Fill (or, with ``check``, only inspect) every region of every page under ``paths``; the regions with their
    status before filling. A page is rewritten only when one of its regions changes."""
    if not Path(generated).is_dir():
        raise LordError(f"generated folder {generated} does not exist; run python -m analysis.make_all --out "
                        f"{generated} first")
    regions: list[Region] = []
    for page in pages_under(paths, Path(generated)):
        text = page.read_text()
        new, found = fill(text, Path(generated), page)
        regions += found
        if not check and new != text:
            page.write_text(new)
    return regions


def report(regions: list[Region], check: bool) -> list[str]:
    """One line per region that is not up to date (with ``check``) or that changed or is missing (filling)."""
    lines = []
    for r in regions:
        if r.status == "missing":
            lines.append(f"{r.page}:{r.line}: {r.name} missing (left as it is)")
        elif r.status == "out of date":
            lines.append(f"{r.page}:{r.line}: {r.name} {'out of date' if check else 'updated'}")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pages", nargs="*", default=list(DEFAULT_PAGES),
                    help="pages or folders of pages (default: README.md docs)")
    ap.add_argument("--generated", type=Path, default=DEFAULT_GENERATED,
                    help="the folder make_all wrote (default: docs/generated)")
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 when a region is out of date")
    args = ap.parse_args(argv)
    try:
        regions = fill_pages(args.pages, args.generated, check=args.check)
    except LordError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for line in report(regions, args.check):
        print(line)
    stale = sum(r.status == "out of date" for r in regions)
    missing = sum(r.status == "missing" for r in regions)
    print(f"{len(regions)} regions: {stale} {'out of date' if args.check else 'updated'}, {missing} missing")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())

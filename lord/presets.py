"""What can be run, read from the files themselves (``lord ls``): the experiment presets and the benchmark scripts.

A preset (``conf/experiment/<name>.yaml``) states in its header comment what it regenerates and how long it takes::

    # Artefact: Fig. 1 / Tables 3-4
    # Time: ~72 min on a 2-core CPU, measured (18 points); minutes on one GPU, estimated

A benchmark (``experiments/benchmarks/<name>.py``, a module with a ``__main__`` block) says what it measures in
its docstring's first paragraph, and how long it takes in a docstring paragraph ``Time: ...`` of the same form.

A Time line is one or more entries separated by ``;``, each ``<duration> on <hardware>, measured|estimated``
with an optional ``(<note>)``: *measured* when a recorded run took that long (a committed result's timings, a
benchmark JSON, or a run's record in the docs), *estimated* otherwise. A preset's points are its sweep's
``plus`` points, then its ``points`` or the cartesian product of its ``grid``, exactly as the sweeper launches
them (``preset_points``, which the sweeper imports from here) before any command-line sweep multiplies them.

Nothing here imports a preset's or a benchmark's code: YAML is read as data and docstrings with ``ast``.
"""

from __future__ import annotations

import ast
import itertools
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from lord.errors import LordError

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ROOT / "conf" / "experiment"
BENCHMARKS = ROOT / "experiments" / "benchmarks"

_ENTRY = re.compile(r"^(?P<duration>.+?) on (?:an? |one )?(?P<hardware>.+?), (?P<source>measured|estimated)"
                    r"(?: \((?P<note>.*)\))?$")


@dataclass
class Timing:
    """One entry of a Time line: how long, on what, and whether a run was timed or it is a guess."""

    duration: str
    hardware: str
    source: str  # "measured" or "estimated"
    note: str = ""


@dataclass
class Runnable:
    """A preset or a benchmark, as ``lord ls`` lists it."""

    kind: str  # "preset" or "benchmark"
    name: str
    command: str
    file: str
    summary: str  # a preset's Artefact line; a benchmark's docstring's first paragraph
    time: str  # the Time line as written
    timings: list[Timing] = field(default_factory=list)
    points: int | None = None  # presets only
    analysis: list[str] = field(default_factory=list)  # presets only: hydra.sweeper.artefacts

    def to_json(self) -> dict:
        return asdict(self)


def preset_points(grid: dict | None, plus: list | None, points: list | None) -> list[list[str]]:
    """A preset's points: ``plus`` first, then ``points`` or the grid's cartesian product."""
    grid = dict(grid or {})
    product = [[f"{k}={v}" for k, v in zip(grid, combo)] for combo in itertools.product(*grid.values())]
    main = [list(p) for p in points or []] or (product if grid else [])
    return [list(p) for p in plus or []] + main or [[]]


def parse_time(line: str, where: str) -> list[Timing]:
    """The entries of a Time line, or one line (naming ``where``) saying what is wrong with it."""
    entries, depth, start = [], 0, 0
    for i, ch in enumerate(line + ";"):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if ch == ";" and depth == 0:
            entries.append(line[start:i].strip())
            start = i + 1
    timings = []
    for entry in entries:
        m = _ENTRY.match(entry)
        if not m:
            raise LordError(f"{where}: Time entry {entry!r} is not '<duration> on <hardware>, measured|estimated "
                            f"(<note>)', e.g. '~9 min on a 2-core CPU, measured (5 points)'")
        timings.append(Timing(m["duration"], m["hardware"], m["source"], m["note"] or ""))
    return timings


def _header_field(text: str, key: str, where: str, paragraph: bool = False) -> str:
    """The text after ``<key>:`` at the start of a line: that line, or (``paragraph``) up to the next blank line."""
    pattern = rf"^{key}:(.*(?:\n(?!\s*\n).+)*)" if paragraph else rf"^{key}:(.*)$"
    found = [" ".join(m.split()) for m in re.findall(pattern, text, flags=re.MULTILINE)]
    if len(found) != 1 or not found[0]:
        raise LordError(f"{where}: needs exactly one non-empty '{key}:' line, found {len(found)}")
    return found[0]


def _comment_header(text: str) -> str:
    """The leading comment block of a YAML file, without the '# ' prefixes."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:].removeprefix(" "))
    return "\n".join(lines)


def _relative(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def read_preset(path: Path) -> Runnable:
    where = _relative(path)
    text = path.read_text()
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise LordError(f"{where} is not valid YAML: {str(e).splitlines()[0]}") from None
    header = _comment_header(text)
    time = _header_field(header, "Time", where)
    sweeper = ((data.get("hydra") or {}).get("sweeper") or {}) if isinstance(data, dict) else {}
    return Runnable(kind="preset", name=path.stem, command=f"python -m experiments.main experiment={path.stem}",
                    file=where, summary=_header_field(header, "Artefact", where), time=time,
                    timings=parse_time(time, where),
                    points=len(preset_points(sweeper.get("grid"), sweeper.get("plus"), sweeper.get("points"))),
                    analysis=list(sweeper.get("artefacts") or []))


def _has_main_block(tree: ast.Module) -> bool:
    return any(isinstance(node, ast.If) and "__main__" in ast.unparse(node.test) for node in tree.body)


def read_benchmark(path: Path) -> Runnable | None:
    """A benchmark script's entry, or None for a helper module (no ``__main__`` block)."""
    where = _relative(path)
    tree = ast.parse(path.read_text(), filename=where)
    if not _has_main_block(tree):
        return None
    doc = ast.get_docstring(tree) or ""
    if not doc.strip():
        raise LordError(f"{where}: a benchmark needs a module docstring (first line: what it measures)")
    time = _header_field(doc, "Time", where, paragraph=True)
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts) if path.is_relative_to(ROOT) else path.stem
    return Runnable(kind="benchmark", name=path.stem, command=f"python -m {module}", file=where,
                    summary=" ".join(doc.strip().split("\n\n")[0].split()), time=time, timings=parse_time(time, where))


def runnables(presets: Path | None = None, benchmarks: Path | None = None) -> list[Runnable]:
    """Every preset, then every benchmark, each sorted by name (by default those next to this package)."""
    presets, benchmarks = presets or PRESETS, benchmarks or BENCHMARKS
    if not presets.is_dir():
        raise LordError(f"no presets at {presets}: lord ls reads conf/experiment of a lord checkout or install")
    found = [read_preset(p) for p in sorted(presets.glob("*.yaml"))]
    if benchmarks.is_dir():
        found += [b for p in sorted(benchmarks.glob("*.py")) if (b := read_benchmark(p)) is not None]
    return found


def table(items: list[Runnable]) -> str:
    """The listing ``lord ls`` prints: presets (with their points), then benchmarks."""
    out = []
    for kind, title, how in (("preset", "Presets", "python -m experiments.main experiment=<name>"),
                             ("benchmark", "Benchmarks", "python -m experiments.benchmarks.<name>")):
        rows = [r for r in items if r.kind == kind]
        if not rows:
            continue
        width = max(len(r.name) for r in rows)
        out.append(f"{title} ({how}):")
        for r in rows:
            points = f"{r.points:>3} points  " if r.points is not None else ""
            out.append(f"  {r.name:<{width}}  {points}{r.summary}")
            out.append(f"  {'':<{width}}  {'':<{len(points)}}time: {r.time}")
        out.append("")
    return "\n".join(out).rstrip() + "\n"

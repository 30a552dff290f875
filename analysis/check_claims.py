"""List every number in the README and the docs that no committed result, benchmark, generated table or paper
value holds: the claims a reader cannot trace to a file.

    python -m analysis.check_claims                   # README.md and docs/ (generated files excluded)
    python -m analysis.check_claims --json            # machine-readable

What counts as a number: anything with a decimal point or a unit (%, ×, GB/GiB/MB/MiB, s/min/h, tokens/s), and
integers of three digits or more; small bare integers (counts such as "8 windows") are too common in any data
to trace and are skipped. Fenced code blocks and inline code (commands, config values), link targets, generated
regions (``<!-- table: ... -->``), version numbers, years and references (Table 2, Fig. 6, A.5, Eq. 6, #32) are
skipped too.

Where numbers are looked for: every number in the JSON files under ``results/published`` and
``results/benchmarks``, the tables under ``docs/generated``, the paper's values (``analysis/paper/*.csv``) and
the configs (``conf/``). A printed number matches a source value when the value, or 100 times it (a fraction
shown in %), rounds to it at the printed precision; a duration matches a recorded time in seconds that rounds
to it ("10 min 31 s": 630.5-631.5 s; "13 min": 750-810 s), or the sum of one experiment's recorded times within
15 %. A count out of a total ("4 of 40", "26 of its 44") holds only where one JSON object, or one row of a
generated table, holds both numbers; a small count of something the results count ("16 tasks", "3 draws") only
where a key named for it holds that value ("n_tasks": 16). Memory matches any recorded peak at the printed
precision; with about 1,300 recorded peaks a coincident value can pass, so memory claims are the weakest check.
A claim that should stay although it is listed (a value computed in the prose from two traced numbers, say) goes
in ``analysis/claims_allowlist.txt`` with its reason: ``<file>:<number>  <why>``.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
UNITS = r"(?P<unit>\s?(?:%|×|x\b|GB|GiB|MB|MiB|KB|kB|TB|tokens/s|tok/s|min|s\b|ms\b|h\b))"
NUMBER = re.compile(r"(?<![\w.#§/-])(?P<sign>[+−-])?(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)"
                    r"(?P<sci>\s?×\s?10(?P<exp>[⁰¹²³⁴⁵⁶⁷⁸⁹⁻]+))?" + UNITS + "?")
REFERENCE = re.compile(r"(?:Table|Tables|Fig\.|Figs\.|Figure|Eq\.|§|A\.|issue|stop|Q|step|Algorithm|Alg\.)\s?$")
SUPERSCRIPT = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹⁻", "0123456789-")
SECONDS = {"s": 1, "ms": 1e-3, "min": 60, "h": 3600}


@dataclass
class Claim:
    file: str
    line: int
    text: str
    context: str


def prose_lines(text: str):
    """(line number, text) of the prose: no fenced code, no generated regions; inline code and link targets
    blanked."""
    fenced = generated = False
    for i, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("```"):
            fenced = not fenced
            continue
        if stripped.startswith("<!-- table:"):
            generated = True
            continue
        if stripped.startswith("<!-- /table"):
            generated = False
            continue
        if fenced or generated:
            continue
        line = re.sub(r"`[^`]*`", " ", line)
        line = re.sub(r"\]\([^)]*\)", "] ", line)  # link targets
        line = re.sub(r"https?://\S+", " ", line)
        yield i, line


COMPOUND = re.compile(r"(?P<min>\d+)\s?min\s(?P<sec>\d+)\s?s\b")
# "4 of 40", "26 of its 44", "3 out of 8": a count out of a total, checked as a pair
INTEGER = r"\d{1,3}(?:,\d{3})+|\d+"
PAIR = re.compile(rf"(?<![\w.,#])(?P<x>{INTEGER})\s+(?:out\s+)?of\s+(?:its\s+|the\s+|all\s+)?(?P<y>{INTEGER})"
                  r"(?![\w%]|[.,]\d|\s?(?:%|×))")
# a small count of something the results count, and the words of the keys that count it
COUNTED = {"task": ("task",), "problem": ("problem", "task"), "sample": ("sample",), "completion": ("sample", "task"),
           "draw": ("draw",), "seed": ("seed",), "window": ("window",)}
NOUN_COUNT = re.compile(r"(?<![\w.,#])(?P<n>\d+)\s+(?:\w+\s+)?(?P<noun>" + "|".join(COUNTED) + r")s?\b")


def numbers_in(line: str):
    """(value, decimals, unit, raw) of every checkable number in a prose line ("10 min 31 s" is one duration;
    a pair "4 of 40" has unit "of" and value (4, 40); "16 tasks" has unit "count:task")."""
    for m in COMPOUND.finditer(line):
        yield int(m.group("min")) * 60 + int(m.group("sec")), 0, "s", m.group(0)
    line = COMPOUND.sub(" ", line)
    for m in PAIR.finditer(line):
        if not REFERENCE.search(line[:m.start()]):
            yield (int(m.group("x").replace(",", "")), int(m.group("y").replace(",", ""))), 0, "of", m.group(0)
    line = PAIR.sub(" ", line)
    for m in NOUN_COUNT.finditer(line):
        if int(m.group("n")) < 100 and not REFERENCE.search(line[:m.start()]):
            yield int(m.group("n")), 0, f"count:{m.group('noun')}", m.group(0)
    for m in NUMBER.finditer(line):
        raw, num, unit = m.group(0), m.group("num"), (m.group("unit") or "").strip()
        before = line[:m.start()]
        if REFERENCE.search(before) or re.match(r"\d+\.\d+\.\d+", line[m.start("num"):]):
            continue  # Table 2, Fig. 6, A.5; a version 1.2.3
        if re.fullmatch(r"(19|20)\d\d", num) and not unit:
            continue  # a year
        value = float(num.replace(",", ""))
        decimals = len(num.split(".")[1]) if "." in num else 0
        if m.group("sci"):
            value *= 10 ** int(m.group("exp").translate(SUPERSCRIPT))
            decimals = None
        if not unit and decimals == 0 and not m.group("sci") and value < 100:
            continue  # a small count
        yield value, decimals, unit, raw.strip()


LONG_LIST = 64  # longer lists are data (spectra, per-window NLL, margins), not quotable values
SKIPPED_KEYS = ("window_nll", "block_nll", "dense_window_nll", "dense_block_nll", "margins", "spectrum", "spectra")
MEMORY = {"GB": 1e9, "GiB": 2**30, "MB": 1e6, "MiB": 2**20, "KB": 1e3, "kB": 1e3, "TB": 1e12}
MEMORY_KEYS = {"mib": 2**20, "gib": 2**30, "bytes": 1, "_mb": 1e6, "_gb": 1e9}


def _objects(x, out: list) -> None:
    """For every dict (at any depth) with two or more numbers among its own values, the set of those numbers."""
    if isinstance(x, dict):
        own = {abs(float(v)) for v in x.values() if isinstance(v, (int, float)) and not isinstance(v, bool)
               and math.isfinite(v)}
        if len(own) > 1:
            out.append(own)
        for v in x.values():
            _objects(v, out)
    elif isinstance(x, list) and len(x) <= LONG_LIST:
        for v in x:
            _objects(v, out)


def _walk(x, out: list, key: str = "", path: tuple = ()):
    """(key, value, path) of every number: ``key`` the innermost dict key, ``path`` every key above it."""
    if isinstance(x, bool) or any(s in key for s in SKIPPED_KEYS):
        return
    if isinstance(x, (int, float)):
        if math.isfinite(x):
            out.append((key, float(x), path))
    elif isinstance(x, dict):
        for k, v in x.items():
            _walk(v, out, str(k), (*path, str(k)))
    elif isinstance(x, list) and len(x) <= LONG_LIST:
        for v in x:
            _walk(v, out, key, path)


def _seconds_per_unit(path: tuple) -> float | None:
    """1 for a number recorded in seconds, 1e-3 in milliseconds (by its own key or a dict's above it:
    ``wall_s: {namespaces: 39.8}``), else None."""
    if any("per_s" in k or "per_second" in k for k in path):
        return None  # a rate (tokens per second), not a time
    for k in reversed(path):
        if k.endswith("_ms") or k == "ms":
            return 1e-3
        if k.endswith("_s") or "second" in k:
            return 1.0
    return None


class Sources:
    """Every number a claim may come from, with the recorded durations and their per-experiment sums."""

    def __init__(self, root: Path = ROOT):
        values: list[tuple[str, float]] = []
        self.objects: list[set] = []  # the numbers one JSON object, or one generated table row, holds together
        self.durations: list[float] = []
        self.memory: list[float] = []  # bytes
        sums: dict[str, float] = defaultdict(float)
        for folder in (root / "results" / "published", root / "results" / "benchmarks"):
            for f in folder.rglob("*.json"):
                try:
                    data = json.loads(f.read_text())
                except (OSError, ValueError):
                    continue
                found: list = []
                _walk(data, found)
                values += [(k, v) for k, v, _ in found]
                _objects(data, self.objects)
                for k, v, path in found:
                    if (unit := _seconds_per_unit(path)) is not None:
                        self.durations.append(v * unit)
                    scale = next((f for s, f in MEMORY_KEYS.items() if s in k.lower()), None)
                    if scale is not None and any(w in k.lower() for w in ("rss", "peak", "memory")):
                        self.memory.append(v * scale)
                if isinstance(data, dict) and isinstance(data.get("timings"), dict):
                    sums[str(data.get("experiment"))] += sum(v for v in data["timings"].values()
                                                            if isinstance(v, (int, float)))
        for f in list((root / "docs" / "generated").glob("*.md")) + list((root / "analysis" / "paper").glob("*.csv")):
            for row in f.read_text().splitlines():
                cells = []
                for cell in re.findall(r"[+−-]?\d[\d,]*(?:\.\d+)?(?:e[+-]?\d+)?", row):
                    try:
                        cells.append(float(cell.replace(",", "").replace("−", "-")))
                    except ValueError:
                        pass
                values += [("", v) for v in cells]
                if len(cells) > 1:
                    self.objects.append({abs(v) for v in cells})
        for f in (root / "conf").rglob("*.yaml"):
            found = []
            _walk(yaml.safe_load(f.read_text()) or {}, found)
            values += [(k, v) for k, v, _ in found]
        self.values = sorted({abs(v) for _, v in values})
        # a "%" claim is looked for among tables, paper values and keys that hold shares (not byte counts)
        self.percents = sorted({abs(v) for k, v in values if not k or any(
            w in k.lower() for w in ("percent", "pass", "increase", "fraction", "share", "ratio", "rate", "ci_",
                                     "perplexity", "mean"))})
        self.sums = list(sums.values())
        self.counted = {noun: {abs(v) for k, v in values if any(w in k.lower() for w in words)}
                        for noun, words in COUNTED.items()}

    @staticmethod
    def _near(pool: list[float], lo: float, hi: float) -> bool:
        import bisect

        i = bisect.bisect_left(pool, lo)
        return i < len(pool) and pool[i] <= hi

    def holds(self, value, decimals, unit: str) -> bool:
        if unit == "of":
            x, y = value
            return any(x in o and y in o for o in self.objects)
        if unit.startswith("count:"):
            return value in self.counted[unit.split(":", 1)[1]]
        if unit in MEMORY:  # against recorded memory, GB and GiB alike (prose mixes them)
            half = 0.5 * 10 ** -(decimals or 0)
            return any(abs(m / f - value) <= half for m in self.memory for f in (MEMORY[unit], 1e9, 2**30, 2**20, 1e6)
                       if f in (MEMORY[unit],) or unit in ("GB", "GiB") and f in (1e9, 2**30)
                       or unit in ("MB", "MiB") and f in (1e6, 2**20))
        if unit in SECONDS:  # a recorded time that rounds to it at its printed precision ("10 min 31 s": +-0.5 s)
            secs, half = value * SECONDS[unit], 0.5 * 10 ** -(decimals or 0) * SECONDS[unit]
            return (any(abs(d - secs) <= half for d in self.durations)
                    or any(abs(s - secs) <= 0.15 * secs for s in self.sums))
        value = abs(value)
        pool = self.percents if unit == "%" else self.values
        if decimals is None:  # scientific: two significant digits
            return self._near(pool, value * 0.95, value * 1.05)
        half = 0.5 * 10 ** -decimals
        return (self._near(pool, value - half, value + half)
                or self._near(pool, (value - half) / 100, (value + half) / 100))


def allowlist(path: Path) -> set[tuple[str, str]]:
    out = set()
    if path.is_file():
        for line in path.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                where = re.split(r"\s{2,}", line, maxsplit=1)[0]  # a number may carry its unit after one space
                file, _, number = where.rpartition(":")
                out.add((file, number))
    return out


def check(files, sources: Sources, allowed: set) -> list[Claim]:
    claims = []
    for f in files:
        rel = str(f.relative_to(ROOT)) if f.is_absolute() and ROOT in f.parents else str(f)
        for i, line in prose_lines(f.read_text()):
            for value, decimals, unit, raw in numbers_in(line):
                if (rel, raw) in allowed or sources.holds(value, decimals, unit):
                    continue
                claims.append(Claim(rel, i, raw, line.strip()[:160]))
    return claims


def default_files(root: Path = ROOT) -> list[Path]:
    docs = [p for p in sorted((root / "docs").rglob("*.md")) if "generated" not in p.parts]
    return [root / "README.md", *docs]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="*", type=Path, help="Markdown files (default: README.md and docs/)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    files = [p.resolve() for p in args.files] or default_files()
    claims = check(files, Sources(), allowlist(ROOT / "analysis" / "claims_allowlist.txt"))
    if args.json:
        print(json.dumps([c.__dict__ for c in claims], indent=1, ensure_ascii=False))
    else:
        for c in claims:
            print(f"{c.file}:{c.line}: {c.text}    | {c.context}")
        print(f"{len(claims)} number(s) with no source in {len(files)} file(s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

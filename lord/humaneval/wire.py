"""The evaluator's reading of what a sandbox wrote: bounded in size, depth, count and time, whatever the bytes.

A result stream is one JSON object per line (sandbox_runner.py). The evaluator reads at most
``len(calls) + 1`` lines (the answers and the end mark; anything after them is never parsed), and each line only
after a scan that needs no parsing:

* a line longer than ``MAX_LINE_BYTES`` is refused (the stream as a whole is capped by ``Limits.max_file_mb``);
* the brackets outside strings are counted: more than ``MAX_CONTAINERS`` lists and objects in one sample, or
  nesting deeper than ``MAX_WIRE_DEPTH``, is refused *before* ``json.loads`` could recurse or allocate;
* ``json.loads`` then runs on at most a few MiB with bounded depth (JSON object keys are strings, whose hashes
  the sandbox cannot predict); a value is checked by ``plain.check``, iteratively and without building it,
  so colliding integer keys cost nothing here (the replay's ``plain.decode`` refuses them);
* each record is rebuilt from the keys it may have, with every message cut to ``MAX_MESSAGE`` characters.

Whatever goes wrong — including an exception no rule foresaw — ``read_results`` returns the reason as
``malformed`` instead of raising, so one sample fails and the evaluation goes on.
"""

from __future__ import annotations

import json
import re

import numpy as np

from lord.humaneval import plain

MAX_LINE_BYTES = 4 << 20
MAX_CONTAINERS = 1 << 19  # lists + objects in one sample's answers (each costs ~100-200 bytes once parsed)
MAX_VALUES = 1 << 21  # values in one sample's answers
MAX_WIRE_DEPTH = plain.MAX_DEPTH + 4  # the record object and the [args, kwargs] envelope around a value
MAX_MESSAGE = 200  # characters of a sandbox's message kept in a result row

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)  # a JSON string, unrolled (linear, no backtracking)
_OPEN, _CLOSE = (ord("["), ord("{")), (ord("]"), ord("}"))


class Unreadable(ValueError):
    """A result stream the evaluator refuses to read further."""


def shape(line: bytes) -> tuple[int, int]:
    """(deepest nesting, number of lists and objects) of a JSON line, counted outside strings without parsing.

    An unterminated string leaves its brackets counted, which can only overstate: a line is never
    understated, so ``json.loads`` never recurses deeper than this says."""
    bare = _STRING.sub(b'""', line)
    containers = bare.count(b"[") + bare.count(b"{")
    if not containers:
        return 0, 0
    a = np.frombuffer(bare, dtype=np.uint8)
    step = np.isin(a, _OPEN).astype(np.int32) - np.isin(a, _CLOSE)
    return int(np.cumsum(step).max()), containers


def _text(value, what: str) -> str:
    if type(value) is not str:
        raise Unreadable(f"{what} is not a string")
    return value[:MAX_MESSAGE]


def _record(raw) -> dict:
    """The record with only the keys it may have, its value checked, its messages cut."""
    if type(raw) is not dict:
        raise Unreadable("a result line is not an object")
    if "unserialisable" in raw:
        return {"unserialisable": _text(raw["unserialisable"], "an unserialisable message")}
    if "ok" in raw:
        plain.check(raw["ok"], MAX_VALUES)
        record = {"ok": raw["ok"]}
    elif "raised" in raw:
        record = {"raised": _text(raw["raised"], "an exception's name"),
                  "message": _text(raw.get("message", ""), "an exception's message")}
    else:
        raise Unreadable("a result line is neither a value nor an exception")
    if "args_after" in raw:
        plain.check(raw["args_after"], MAX_VALUES)
        record["args_after"] = raw["args_after"]
    return record


def read_results(data: bytes, expected: int) -> tuple[list, bool, str | None]:
    """(records, done, malformed) from the raw stream of an execution asked ``expected`` calls.

    ``records`` are the answers read before the end mark or the first unreadable line; ``done`` says the end
    mark came (the program's end, in program mode); ``malformed`` is why reading stopped early, if it did."""
    records: list = []
    containers = 0
    try:
        for line in data.split(b"\n", expected + 1)[:expected + 1]:
            if not line:  # the end of what was written (the runner never writes an empty line)
                break
            if len(line) > MAX_LINE_BYTES:
                raise Unreadable(f"a result line is longer than {MAX_LINE_BYTES} bytes")
            depth, n = shape(line)
            containers += n
            if depth > MAX_WIRE_DEPTH:
                raise Unreadable(f"a result line is nested deeper than {MAX_WIRE_DEPTH}")
            if containers > MAX_CONTAINERS:
                raise Unreadable(f"the results hold more than {MAX_CONTAINERS} lists and objects")
            try:
                raw = json.loads(line)
            except ValueError:
                raise Unreadable("a result line is not JSON") from None
            if type(raw) is dict and (raw.get("done") is True or raw.get("program_finished") is True):
                return records, True, None
            records.append(_record(raw))
    except Exception as e:  # noqa: BLE001 - whatever the bytes do, this sample fails and the evaluation goes on
        why = str(e) if isinstance(e, (Unreadable, plain.NotPlainData)) else f"{type(e).__name__}: {e}"
        return records[:expected], False, why[:MAX_MESSAGE]
    return records[:expected], False, None

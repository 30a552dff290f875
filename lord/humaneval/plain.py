"""Plain data across the sandbox boundary: a tagged JSON form of Python builtins that round-trips exactly.

The sandbox sends back the *values* a completion returned, never objects: an object with a custom ``__eq__``
cannot survive this codec, so it cannot pass a test by comparing equal to everything.

Encoded forms (one JSON value each):

    None, True, False, int, str      as JSON (``type(v) is int`` exactly: subclasses are refused)
    float                            {"f": float.hex(v)}          exact, incl. inf and nan
    complex                          {"c": [re.hex(), im.hex()]}
    bytes                            {"b": v.hex()}
    list                             [items]
    tuple / set / frozenset          {"t": [...]} / {"s": [...]} / {"fs": [...]}
    dict                             {"d": [[key, value], ...]}   insertion order kept
    numpy scalars (int64, float32, bool_, ...) are encoded by value (``.item()``), as the issue asks.

``decode`` is the trusted half: it accepts exactly these forms (anything else raises ``NotPlainData``),
bounded in depth, so whatever a hostile process writes, the evaluator gets builtins or an error.
This module imports only the standard library: the sandbox runs it with ``python -I -S``.
"""

from __future__ import annotations

MAX_DEPTH = 64


class NotPlainData(ValueError):
    """A value (on encode) or a document (on decode) that is not plain data."""


def encode(value, _depth: int = 0):
    if _depth > MAX_DEPTH:
        raise NotPlainData(f"nested deeper than {MAX_DEPTH}")
    t = type(value)
    if value is None or t is bool or t is str:
        return value
    if t is int:
        return value
    if t is float:
        return {"f": value.hex()}
    if t is complex:
        return {"c": [value.real.hex(), value.imag.hex()]}
    if t is bytes:
        return {"b": value.hex()}
    d = _depth + 1
    if t is list:
        return [encode(v, d) for v in value]
    if t is tuple:
        return {"t": [encode(v, d) for v in value]}
    if t is set or t is frozenset:
        return {"s" if t is set else "fs": [encode(v, d) for v in value]}
    if t is dict:
        return {"d": [[encode(k, d), encode(v, d)] for k, v in value.items()]}
    if t.__module__ == "numpy" and t.__name__ != "ndarray" and hasattr(value, "item"):
        item = value.item()
        if type(item).__module__ != "numpy":
            return encode(item, d)
    raise NotPlainData(f"{t.__module__}.{t.__qualname__}")


_TAGGED = {"t": tuple, "s": set, "fs": frozenset}


def decode(doc, _depth: int = 0):
    if _depth > MAX_DEPTH:
        raise NotPlainData(f"nested deeper than {MAX_DEPTH}")
    t = type(doc)
    if doc is None or t in (bool, int, str):
        return doc
    d = _depth + 1
    if t is list:
        return [decode(v, d) for v in doc]
    if t is not dict or len(doc) != 1:
        raise NotPlainData(f"not an encoded value: {type(doc).__name__}")
    (tag, body), = doc.items()
    try:
        if tag == "f" and type(body) is str:
            return float.fromhex(body)
        if tag == "c" and type(body) is list and len(body) == 2 and all(type(x) is str for x in body):
            return complex(float.fromhex(body[0]), float.fromhex(body[1]))
        if tag == "b" and type(body) is str:
            return bytes.fromhex(body)
        if tag in _TAGGED and type(body) is list:
            return _TAGGED[tag](decode(v, d) for v in body)
        if tag == "d" and type(body) is list:
            out = {}
            for pair in body:
                if type(pair) is not list or len(pair) != 2:
                    raise NotPlainData("a dict entry is not a [key, value] pair")
                out[decode(pair[0], d)] = decode(pair[1], d)
            return out
    except (TypeError, OverflowError) as e:  # unhashable key or set member, out-of-range float text
        raise NotPlainData(str(e)) from None
    except ValueError as e:
        raise NotPlainData(str(e)) from None
    raise NotPlainData(f"unknown tag {tag!r}")

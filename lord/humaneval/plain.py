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
bounded in depth, and refuses a dict or set whose keys collide in hash (more than ``MAX_SHARED_HASH`` share one
value: integers ``k * (2**61 - 1)`` all hash alike and would make building the dict quadratic), so whatever a
hostile process writes, the replay gets builtins or an error in linear time. ``check`` accepts and refuses
exactly what ``decode`` does, except collisions, without building anything (no hashing, no recursion): the
evaluator's own check of a result stream (wire.py).
This module imports only the standard library: the sandbox runs it with ``python -I -S``.
"""

from __future__ import annotations

MAX_DEPTH = 64
MAX_SHARED_HASH = 16  # keys of one dict (members of one set) sharing a hash value; plain data has a few at most


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
        if tag == "t" and type(body) is list:
            return tuple(decode(v, d) for v in body)
        if tag in _TAGGED and type(body) is list:
            return _TAGGED[tag](_distinct_hashes([decode(v, d) for v in body]))
        if tag == "d" and type(body) is list:
            for pair in body:
                if type(pair) is not list or len(pair) != 2:
                    raise NotPlainData("a dict entry is not a [key, value] pair")
            keys = _distinct_hashes([decode(pair[0], d) for pair in body])
            return dict(zip(keys, (decode(pair[1], d) for pair in body)))
    except (TypeError, OverflowError) as e:  # unhashable key or set member, out-of-range float text
        raise NotPlainData(str(e)) from None
    except ValueError as e:
        raise NotPlainData(str(e)) from None
    raise NotPlainData(f"unknown tag {tag!r}")


def _distinct_hashes(keys: list) -> list:
    """``keys``, unless more than ``MAX_SHARED_HASH`` of them share a hash value (TypeError if one is unhashable)."""
    count: dict = {}
    for k in keys:
        h = hash(k)
        count[h] = count.get(h, 0) + 1  # distinct hash values are distinct int keys: this dict cannot collide
        if count[h] > MAX_SHARED_HASH:
            raise NotPlainData(f"more than {MAX_SHARED_HASH} dict keys or set members share one hash value")
    return keys


def check(doc, max_values: int = 1 << 21) -> None:
    """Raise NotPlainData unless ``decode(doc)`` would succeed (collisions aside) and ``doc`` holds at most
    ``max_values`` values. Iterative, and builds nothing: the time is linear in the size of ``doc``."""
    stack, seen = [(doc, 0, False)], 0  # (node, depth, must be hashable: a dict key or a set member)
    while stack:
        node, depth, key = stack.pop()
        seen += 1
        if seen > max_values:
            raise NotPlainData(f"more than {max_values} values")
        if depth > MAX_DEPTH:
            raise NotPlainData(f"nested deeper than {MAX_DEPTH}")
        t = type(node)
        if node is None or t is bool or t is int or t is str:
            continue
        if t is list:
            if key:
                raise NotPlainData("unhashable type: 'list'")
            stack.extend((v, depth + 1, False) for v in node)
            continue
        if t is not dict or len(node) != 1:
            raise NotPlainData(f"not an encoded value: {t.__name__}")
        (tag, body), = node.items()
        if tag in ("f", "b", "c"):
            decode(node)  # a float's or bytes' text: linear, nothing nested
            continue
        if tag in _TAGGED and type(body) is list:
            if key and tag == "s":
                raise NotPlainData("unhashable type: 'set'")
            stack.extend((v, depth + 1, key or tag != "t") for v in body)
            continue
        if tag == "d" and type(body) is list:
            if key:
                raise NotPlainData("unhashable type: 'dict'")
            for pair in body:
                if type(pair) is not list or len(pair) != 2:
                    raise NotPlainData("a dict entry is not a [key, value] pair")
                stack.append((pair[0], depth + 1, True))
                stack.append((pair[1], depth + 1, False))
            continue
        raise NotPlainData(f"unknown tag {tag!r}")

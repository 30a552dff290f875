"""User-facing errors.

Every problem a user can fix (a bad rank, an unknown layer kind, a missing file) is raised as
``LordError`` with a one-line message that says what was wrong and how to fix it. Entry points
catch it and print the message alone, never a traceback.
"""


class LordError(Exception):
    """A mistake in the user's input or environment, explained in one line."""


def positive_int(key: str, value, allow_none: bool = False) -> None:
    """One line naming ``key`` unless ``value`` is a positive integer (or None where that means 'all')."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise LordError(f"{key}={value!r} must be a positive integer{' or null (all)' if allow_none else ''}")


def check_skip_first(key: str, value, seq_len: int | None = None) -> None:
    """One line naming ``key`` unless ``value`` is a number of leading window positions that leaves some."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise LordError(f"{key}={value!r} must be a non-negative integer (window positions left out of the "
                        "calibration statistics; 0 counts every position)")
    if seq_len is not None and value >= seq_len:
        raise LordError(f"{key}={value} leaves no position of a {seq_len}-token window; use a value below {seq_len}")

"""User-facing errors.

Every problem a user can fix (a bad rank, an unknown layer kind, a missing file) is raised as
``LordError`` with a one-line message that says what was wrong and how to fix it. Entry points
catch it and print the message alone, never a traceback.
"""


class LordError(Exception):
    """A mistake in the user's input or environment, explained in one line."""

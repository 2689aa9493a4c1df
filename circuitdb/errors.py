"""The one exception type users see.

Everything that is the user's fault (a bad path, a layer out of range, bad SQL) raises
`CircuitDBError` with a single-line message; the CLI prints it and exits non-zero, so no
traceback ever reaches a user for a mistake they can fix.
"""


class CircuitDBError(Exception):
    """A user-facing error whose message is one clear line."""


def first_line(failure: BaseException) -> str:
    """The first line of an error's message ('' when it has none): what a one-line report quotes."""
    text = str(failure).strip()
    return text.splitlines()[0] if text else ""

"""The console entry point: every command registered, every failure one `error:` line."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from typer.exceptions import TyperException

from circuitdb.errors import CircuitDBError, first_line
from circuitdb.store.space import is_out_of_space, out_of_space

# isort: off
from query.cli import store  # noqa: F401  (each module registers its commands; the store's lead the help)
from query.cli import circuit, dictionary, feature, graph  # noqa: F401

# isort: on
from query.cli.common import app

_DEBUG = "CIRCUITDB_DEBUG"
_traceback = {"shown": False}
"""Whether this invocation shows the traceback of a failure (--debug or CIRCUITDB_DEBUG=1)."""


@app.callback()
def _options(
    debug: Annotated[bool, typer.Option("--debug", help=f"Show the traceback of a failure (or {_DEBUG}=1).")] = False,
) -> None:
    _traceback["shown"] |= debug


def _failure(exc: BaseException) -> tuple[str, int]:
    """The one line and exit code a failure ends in."""
    if isinstance(exc, CircuitDBError):
        return str(exc), 1
    if isinstance(exc, TyperException):  # a usage error: a bad option, a missing argument, a bad value
        return " ".join(exc.format_message().split()), exc.exit_code
    if isinstance(exc, KeyboardInterrupt | typer.Abort):
        return "interrupted", 130
    if is_out_of_space(exc):  # a write without the store's own message (LanceDB's, a library's)
        where = getattr(exc, "filename", None)
        if where:
            return str(out_of_space(Path(where))), 1
        return f"no space left on device ({first_line(exc)}): free some space and run the command again", 1
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.strerror or type(exc).__name__}: {exc.filename}", 1
    return f"{type(exc).__name__}: {first_line(exc)} (run with --debug for the traceback)", 1


def main() -> None:
    """Console entry point: every failure ends in one `error:` line on stderr and a non-zero exit (the
    traceback too with --debug or CIRCUITDB_DEBUG=1)."""
    _traceback["shown"] = os.environ.get(_DEBUG) == "1"
    try:
        code = app(standalone_mode=False)
    except (Exception, KeyboardInterrupt) as exc:
        if _traceback["shown"] and not isinstance(exc, CircuitDBError | TyperException):
            raise
        message, code = _failure(exc)
        if message:  # no arguments at all: the help was the answer
            typer.echo(f"error: {message}", err=True)
    sys.exit(code if isinstance(code, int) else 0)

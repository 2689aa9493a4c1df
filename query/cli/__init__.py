"""`circuitdb`: build the store and ask it questions.

Every mistake a user can make ends in one line on stderr and a non-zero exit, never a traceback. One module
per group of commands (`store`, `dictionary`, `feature`, `graph`); each command parses its options, opens
the `Project`, calls one function and renders the answer.
"""

from query.cli.main import app, main

__all__ = ["app", "main"]

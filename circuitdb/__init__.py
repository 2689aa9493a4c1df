"""circuitdb: a feature and circuit database for transformer language models.

This package is the core library: pure Python + torch. It never imports dagster, typer or
the query package, so it can be used from a notebook as easily as from the pipeline.
"""

from circuitdb.errors import CircuitDBError

__all__ = ["CircuitDBError"]
__version__ = "0.1.0"

"""DuckDB over the store: a view per table a query names, reading the Parquet files as they are now.

The connection is in-memory (no database file), so any number of readers run while a pipeline
writes; partition files are replaced atomically, so a query sees whole files only. Only the tables a
query names are bound (binding reads every partition's footer): the set-up does not grow with the
number of graphs or layers in the store, and a damaged file fails only the queries that read it,
with one line naming it.
"""

from __future__ import annotations

import re
from pathlib import Path

import duckdb

from circuitdb.errors import CircuitDBError
from circuitdb.store.integrity import damaged_message, verify
from circuitdb.store.layout import Store


def sql_literal(text: str) -> str:
    """`text` as a quoted SQL string literal (DuckDB and LanceDB filters alike)."""
    return "'" + text.replace("'", "''") + "'"


_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
"""Words of a query: a table it reads is one of them (a word that only looks like a table binds one view
more, which is harmless). DuckDB's own `get_table_names` binds the query and fails on joins USING columns."""


def named_tables(store: Store, query: str | None) -> list[str]:
    """The store's tables among `query`'s words."""
    words = {word.lower() for word in _WORD.findall(query or "")}
    return [table for table in store.table_names() if table in words]


def bind(con: duckdb.DuckDBPyConnection, store: Store, table: str, named: bool) -> None:
    """(Re)make `table`'s view over its partition files, once they verify. A damaged table the query does
    not name is left unbound, so it does not stop the query."""
    try:
        if named:
            for path in store.partition_files(table):
                verify(store.root, path)
        pattern = sql_literal(str(store.tables_dir / table / "*.parquet"))
        con.execute(f'CREATE OR REPLACE VIEW "{table}" AS SELECT * FROM read_parquet({pattern}, union_by_name=true)')
    except (duckdb.Error, CircuitDBError) as exc:
        if named:
            raise damaged_file_error(store, exc) if isinstance(exc, duckdb.Error) else exc from None


def connect(store: Store, query: str | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with a view per table of `store` that `query` names (every table
    when it names none, as `SHOW TABLES` does)."""
    con = duckdb.connect(":memory:")
    named = named_tables(store, query)
    for table in named or store.table_names():
        bind(con, store, table, table in named)
    return con


_QUOTED_PATH = re.compile(r"""["']([^"']+\.parquet)["']""")


def damaged_file_error(store: Store, exc: Exception) -> Exception:
    """One line naming the partition file a DuckDB error is about and what to do, or `exc` unchanged
    when it names no file of the store."""
    for found in _QUOTED_PATH.findall(str(exc)):
        path = Path(found)
        if path.is_relative_to(store.tables_dir):
            return damaged_partition(store, path, str(exc).splitlines()[0])
    return exc


def damaged_partition(store: Store, path: Path, reason: str) -> CircuitDBError:
    """A partition file that cannot be read (one written before checksums, or damaged in its footer)."""
    return CircuitDBError(damaged_message(store.root, path, " ".join(reason.split())))

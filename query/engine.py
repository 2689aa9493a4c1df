"""The read-only query engine behind `circuitdb sql`.

Two layers keep a query from changing anything:
1. the parser: only SELECT (incl. DESCRIBE/SHOW/WITH) and EXPLAIN statements are run, so COPY,
   ATTACH, INSTALL/LOAD, PRAGMA, SET and every DDL/DML are refused before execution;
2. the sandbox: after the views of the tables the query names are created, file access is limited to the store's tables,
   external access is off and the configuration is locked, so no statement can lift it.
The connection is in-memory over the Parquet files, so queries run while a pipeline writes.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import duckdb

from circuitdb.errors import CircuitDBError
from circuitdb.store import Store, connect, sql_literal
from circuitdb.store.catalog import bind, damaged_file_error, named_tables

READ_ONLY_STATEMENTS = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}


@dataclass
class QueryResult:
    columns: list[str]
    """Column names, in order."""
    types: list[str]
    """DuckDB type of each column."""
    rows: list[tuple]
    """The rows."""


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split("\n")[0].split())


def check_read_only(sql: str) -> str:
    """Return the single statement in `sql` if it only reads; raise a one-line error otherwise."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise CircuitDBError(f"malformed SQL: {_one_line(exc)}") from None
    if not statements:
        raise CircuitDBError("empty SQL: give one SELECT statement")
    if len(statements) > 1:
        raise CircuitDBError(f"one statement at a time, got {len(statements)}")
    statement = statements[0]
    if statement.type not in READ_ONLY_STATEMENTS:
        raise CircuitDBError(
            f"read-only store: {statement.type.name} statements are refused; only SELECT and EXPLAIN run"
        )
    return statement.query


def sandbox(con: duckdb.DuckDBPyConnection, store: Store) -> duckdb.DuckDBPyConnection:
    """Lock `con` down to reading the store's tables."""
    con.execute(f"SET allowed_directories=[{sql_literal(str(store.tables_dir))}]")
    con.execute("SET enable_external_access=false")
    con.execute("SET lock_configuration=true")
    return con


def read_only_connection(store: Store, query: str) -> duckdb.DuckDBPyConnection:
    """Views of the tables `query` names on a connection locked down to reading the store's tables."""
    return sandbox(connect(store, query), store)


class Catalog:
    """For a long-lived process (the viewer): one sandboxed in-memory database whose views are remade only
    when a query names a table whose partition files changed since; each query runs on its own cursor.
    One-shot commands bind afresh instead (`run_sql` without a catalog), which costs ~15 ms a query."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._con = sandbox(duckdb.connect(":memory:"), store)
        self._bound: dict[str, tuple] = {}
        self._lock = threading.Lock()

    def cursor(self, query: str) -> duckdb.DuckDBPyConnection:
        with self._lock:
            for table in named_tables(self.store, query):
                # every write replaces a partition file by a rename, which changes its folder's mtime: one stat
                # notices any change, where a stat per file took ~15 ms for a table of 1,000 graphs
                folder = (self.store.tables_dir / table).stat()
                signature = (folder.st_mtime_ns, folder.st_ino, folder.st_nlink)
                if self._bound.get(table) != signature:
                    bind(self._con, self.store, table, named=True)
                    self._bound[table] = signature
            return self._con.cursor()


_catalogs: dict[Path, Catalog] = {}


def keep_catalog(store: Store) -> None:
    """Serve every later `run_sql` on `store` in this process from one Catalog."""
    _catalogs[store.root] = Catalog(store)


def run_sql(store: Store, sql: str) -> QueryResult:
    """Run one read-only statement over the store's tables."""
    query = check_read_only(sql)
    catalog = _catalogs.get(store.root)
    con = catalog.cursor(query) if catalog is not None else read_only_connection(store, query)
    try:
        cursor = con.execute(query)
        description = cursor.description or []
        rows = cursor.fetchall()
    except duckdb.Error as exc:
        damaged = damaged_file_error(store, exc)
        if isinstance(damaged, CircuitDBError):
            raise damaged from None
        raise CircuitDBError(f"SQL error: {_one_line(exc)}") from None
    finally:
        con.close()
    return QueryResult([d[0] for d in description], [str(d[1]) for d in description], rows)

"""The read-only query engine behind `circuitdb sql`.

Two layers keep a query from changing anything:
1. the parser: only SELECT (incl. DESCRIBE/SHOW/WITH) and EXPLAIN statements are run, so COPY,
   ATTACH, INSTALL/LOAD, PRAGMA, SET and every DDL/DML are refused before execution;
2. the sandbox: after the views of the tables the query names are created, file access is limited to the store's tables,
   external access is off and the configuration is locked, so no statement can lift it.
The connection is in-memory over the Parquet files, so queries run while a pipeline writes.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

from circuitdb.errors import CircuitDBError
from circuitdb.store import Store, connect, sql_literal
from circuitdb.store.catalog import damaged_file_error

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


def read_only_connection(store: Store, query: str) -> duckdb.DuckDBPyConnection:
    """Views of the tables `query` names on a connection locked down to reading the store's tables."""
    con = connect(store, query)
    con.execute(f"SET allowed_directories=[{sql_literal(str(store.tables_dir))}]")
    con.execute("SET enable_external_access=false")
    con.execute("SET lock_configuration=true")
    return con


def run_sql(store: Store, sql: str) -> QueryResult:
    """Run one read-only statement over the store's tables."""
    query = check_read_only(sql)
    con = read_only_connection(store, query)
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

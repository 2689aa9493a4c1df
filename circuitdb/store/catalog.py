"""DuckDB over the store: one view per table, reading the Parquet files as they are now.

The connection is in-memory (no database file), so any number of readers run while a pipeline
writes; partition files are replaced atomically, so a query sees whole files only.
"""

from __future__ import annotations

import duckdb

from circuitdb.store.layout import Store


def sql_literal(text: str) -> str:
    """`text` as a quoted SQL string literal (DuckDB and LanceDB filters alike)."""
    return "'" + text.replace("'", "''") + "'"


def connect(store: Store) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with a view per table of `store`."""
    con = duckdb.connect(":memory:")
    for table in store.table_names():
        pattern = sql_literal(str(store.tables_dir / table / "*.parquet"))
        con.execute(f'CREATE VIEW "{table}" AS SELECT * FROM read_parquet({pattern}, union_by_name=true)')
    return con

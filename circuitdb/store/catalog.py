"""DuckDB over the store: one view per table, reading the Parquet files as they are now.

The connection is in-memory (no database file), so any number of readers run while a pipeline
writes; partition files are replaced atomically, so a query sees whole files only.
"""

from __future__ import annotations

import duckdb

from circuitdb.store.layout import Store


def connect(store: Store) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with a view per table of `store`."""
    con = duckdb.connect(":memory:")
    for table in store.table_names():
        pattern = str(store.tables_dir / table / "*.parquet").replace("'", "''")
        con.execute(f"CREATE VIEW \"{table}\" AS SELECT * FROM read_parquet('{pattern}', union_by_name=true)")
    return con

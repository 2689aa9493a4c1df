"""The store: layout, table schemas, atomic Parquet writes and the DuckDB catalog over them."""

from circuitdb.store.catalog import connect, sql_literal
from circuitdb.store.layout import Store, atomic_write_bytes
from circuitdb.store.parquet import count_rows, read_table, write_partition
from circuitdb.store.schemas import TABLES, TableSchema, feature_ids, layer_partition, parse_feature_id

__all__ = [
    "TABLES",
    "Store",
    "TableSchema",
    "atomic_write_bytes",
    "connect",
    "count_rows",
    "feature_ids",
    "layer_partition",
    "parse_feature_id",
    "read_table",
    "sql_literal",
    "write_partition",
]

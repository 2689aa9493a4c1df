"""Parquet tables: schema-checked, one file per partition, replaced atomically.

Parquet files are the truth; re-materializing a partition rewrites exactly its file, so there
are never duplicates, and readers (DuckDB views) see the old file or the new one.
"""

from __future__ import annotations

import io
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from circuitdb.errors import CircuitDBError
from circuitdb.store.catalog import damaged_partition
from circuitdb.store.integrity import verify
from circuitdb.store.layout import Store, atomic_write_bytes
from circuitdb.store.schemas import TABLES


def write_partition(store: Store, table: str, partition: str, frame: pl.DataFrame) -> int:
    """Replace `<store>/tables/<table>/<partition>.parquet` with `frame`; returns its row count."""
    schema = TABLES[table]
    expected = {name: dtype for name, (dtype, _) in schema.columns.items()}
    frame = frame.with_columns(pl.lit(None).alias(name) for name in schema.filled_later - set(frame.columns))
    missing = set(expected) - set(frame.columns)
    extra = set(frame.columns) - set(expected)
    if missing or extra:
        raise CircuitDBError(f"table {table}: missing columns {sorted(missing)}, unexpected {sorted(extra)}")
    frame = frame.select([pl.col(name).cast(dtype) for name, dtype in expected.items()])
    buffer = io.BytesIO()
    frame.write_parquet(buffer, compression="zstd", statistics=True)
    atomic_write_bytes(store.table_file(table, partition), buffer.getvalue())
    return frame.height


def read_table(
    store: Store, table: str, columns: list[str] | None = None, partitions: list[str] | None = None
) -> pl.DataFrame:
    """All partitions of `table` (or those named in `partitions`), or only `columns` of them (empty frame with
    the schema when none is written yet)."""
    files = store.partition_files(table)
    if partitions is not None:
        files = [path for path in files if path.stem in set(partitions)]
    if not files:
        schema = {name: dtype for name, (dtype, _) in TABLES[table].columns.items()}
        return pl.DataFrame(schema={name: schema[name] for name in columns or schema})
    return pl.concat([_read(store, table, f, columns) for f in files], how="vertical_relaxed")


def _read(store: Store, table: str, path: Path, columns: list[str] | None) -> pl.DataFrame:
    """One partition file; columns filled in later that it was written without read as null."""
    verify(store.root, path)
    schema = TABLES[table]
    wanted = columns or list(schema.columns)
    later = [name for name in wanted if name in schema.filled_later]
    try:
        present = pl.read_parquet_schema(path) if later else {}  # a second footer read only where it can matter
        absent = [name for name in later if name not in present]
        frame = pl.read_parquet(path, columns=[name for name in wanted if name not in absent])
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise damaged_partition(store, path, str(exc).splitlines()[0]) from None
    nulls = [pl.lit(None, dtype=schema.columns[name][0]).alias(name) for name in absent]
    return frame.with_columns(nulls).select(wanted)


def count_rows(store: Store, table: str) -> int:
    """Rows of every partition of `table`, from the Parquet footers (no data read)."""
    total = 0
    for path in store.partition_files(table):
        verify(store.root, path)
        try:
            total += pq.read_metadata(path).num_rows
        except (pa.ArrowException, OSError) as exc:
            raise damaged_partition(store, path, str(exc).splitlines()[0]) from None
    return total

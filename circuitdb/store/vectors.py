"""Decoder directions in LanceDB: nearest features by cosine, filtered before the search.

One table, `feature_vectors`, one row per feature (unit decoder row + id, dictionary, layer,
index, label, density). A partition (dictionary, layer) is replaced in one commit (a merge on the feature
id that deletes the partition's rows it does not bring), so readers see the old rows or the new ones. Below
`INDEX_MIN_ROWS` rows an exact scan is fast enough (~ms); above it an IVF-HNSW index with scalar
quantization is built, and searches re-rank candidates exactly so recall stays high.
"""

from __future__ import annotations

import functools
import os
from datetime import timedelta
from typing import TYPE_CHECKING

os.environ.setdefault("LANCE_LOG", "error")  # lance warns on every new dataset; the CLI owns the terminal

import lancedb  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
import pyarrow as pa  # noqa: E402

from circuitdb.errors import CircuitDBError  # noqa: E402
from circuitdb.store.catalog import sql_literal  # noqa: E402
from circuitdb.store.layout import Store  # noqa: E402

if TYPE_CHECKING:
    import torch

TABLE = "feature_vectors"
INDEX_MIN_ROWS = 50_000
"""Below this many rows searches scan exactly; above it an ANN index is built."""


def _connect(store: Store) -> lancedb.DBConnection:
    store.pull("vectors/", large=True)
    return _connection(str(store.root / "vectors"))


@functools.lru_cache(maxsize=16)
def _connection(path: str) -> lancedb.DBConnection:
    """One connection per vector folder and process: tables opened through it share its index cache,
    so a search does not reload the ANN index (20 -> 12 ms per `nearest` on the demo store); a zero
    read-consistency interval makes every read see the latest write."""
    return lancedb.connect(path, read_consistency_interval=timedelta(0))


def _table(store: Store):
    db = _connect(store)
    if TABLE not in db.list_tables().tables:
        raise CircuitDBError("no feature vectors in the store yet; run `circuitdb build` (asset feature_vectors)")
    return db.open_table(TABLE)


def write_vectors(store: Store, dictionary: str, layer: int, decoder: torch.Tensor, features: pl.DataFrame) -> int:
    """Replace the vectors of (`dictionary`, `layer`) with the unit rows of `decoder` [n, d]."""
    unit = decoder.detach().float().cpu().numpy()
    unit = unit / np.maximum(np.linalg.norm(unit, axis=1, keepdims=True), 1e-12)  # a copy: never the caller's weights
    features = features.sort("index")
    data = pa.table(
        {
            "feature_id": features["feature_id"].to_list(),
            "dictionary": features["dictionary"].to_list(),
            "layer": pa.array(features["layer"].to_numpy(), pa.int32()),
            "index": pa.array(features["index"].to_numpy(), pa.int32()),
            "label": features["label"].to_list(),
            "density": pa.array(features["density"].to_numpy(), pa.float64()),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(unit.ravel()), unit.shape[1]),
        }
    )
    table = _connect(store).create_table(TABLE, schema=data.schema, exist_ok=True)  # another writer may create it too
    partition = f"dictionary = {sql_literal(dictionary)} AND layer = {int(layer)}"
    (
        table.merge_insert("feature_id")  # one commit: a reader never sees the partition gone or doubled
        .when_matched_update_all()
        .when_not_matched_insert_all()
        .when_not_matched_by_source_delete(partition)
        .execute(data)
    )
    return data.num_rows


def count_vectors(store: Store) -> int:
    return _table(store).count_rows()


def ensure_index(store: Store) -> bool:
    """Build the ANN index when the table is large enough to need one; True if it has one now."""
    table = _table(store)
    rows = table.count_rows()
    if rows < INDEX_MIN_ROWS:
        return False
    partitions = max(1, int(np.sqrt(rows)))
    table.create_index(
        metric="cosine", vector_column_name="vector", index_type="IVF_HNSW_SQ", num_partitions=partitions, replace=True
    )
    return True


def read_vectors(store: Store) -> tuple[list[str], np.ndarray]:
    """Every stored (feature id, unit decoder direction): for exact comparisons such as recall checks."""
    table = _table(store).to_arrow()
    return table["feature_id"].to_pylist(), _stacked(table)


def _stacked(table) -> np.ndarray:
    """An Arrow table's `vector` column as one float32 array [rows, d]."""
    return np.stack(table["vector"].to_numpy(zero_copy_only=False)).astype(np.float32)


def vectors_of(store: Store, feature_ids: list[str]) -> dict[str, np.ndarray]:
    """The unit decoder directions of `feature_ids` that are stored (one query)."""
    if not feature_ids:
        return {}
    listed = ", ".join(sql_literal(feature_id) for feature_id in feature_ids)
    found = _table(store).search().where(f"feature_id IN ({listed})").limit(len(feature_ids)).to_arrow()
    if found.num_rows == 0:
        return {}
    return dict(zip(found["feature_id"].to_pylist(), _stacked(found), strict=True))


def feature_vector(store: Store, feature_id: str) -> np.ndarray:
    rows = _table(store).search().where(f"feature_id = {sql_literal(feature_id)}").limit(1).to_list()
    if not rows:
        raise CircuitDBError(f"unknown feature {feature_id!r}: no decoder vector stored for it")
    return np.asarray(rows[0]["vector"], dtype=np.float32)


def nearest(
    store: Store,
    vector: np.ndarray,
    k: int = 10,
    layers: tuple[int, int] | None = None,
    dictionary: str | None = None,
    density: tuple[float, float] | None = None,
    exclude: str | None = None,
) -> pl.DataFrame:
    """The k features whose decoder direction is closest in cosine to `vector`, filters applied first."""
    table = _table(store)
    width = table.schema.field("vector").type.list_size
    vector = np.asarray(vector, dtype=np.float32).ravel()
    if vector.shape[0] != width:
        raise CircuitDBError(f"vector has dimension {vector.shape[0]}; the stored decoder directions have {width}")
    if not np.isfinite(vector).all() or not np.linalg.norm(vector):
        raise CircuitDBError("the query vector must be finite and non-zero")
    clauses = []
    if layers is not None:
        clauses.append(f"layer >= {int(layers[0])} AND layer <= {int(layers[1])}")
    if dictionary is not None:
        clauses.append(f"dictionary = {sql_literal(dictionary)}")
    if density is not None:
        clauses.append(f"density >= {float(density[0])} AND density <= {float(density[1])}")
    if exclude is not None:
        clauses.append(f"feature_id != {sql_literal(exclude)}")
    # nprobes 16, exact re-ranking of 5·k candidates: recall@10 0.995 on the demo store (nprobes 32: 0.997, slower)
    query = table.search(vector).distance_type("cosine").limit(k).refine_factor(5).nprobes(16)
    if clauses:
        query = query.where(" AND ".join(clauses), prefilter=True)
    columns = ["feature_id", "dictionary", "layer", "index", "label", "density", "_distance"]
    result = pl.from_arrow(query.select(columns).to_arrow())
    return result.with_columns((1 - pl.col("_distance")).alias("cosine")).drop("_distance")

"""Atomic, idempotent partitions and a query engine that cannot write."""

from __future__ import annotations

import threading
from pathlib import Path

import polars as pl
import pytest

from circuitdb.errors import CircuitDBError
from circuitdb.store import Store, read_table, write_partition
from query.engine import run_sql


def _corpora_row(name: str, blocks: int) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "corpus": [name],
            "source": ["test"],
            "model": ["m"],
            "context": [8],
            "n_documents": [1],
            "n_blocks": [blocks],
            "n_train_blocks": [blocks],
            "n_eval_blocks": [0],
            "n_tokens": [8 * blocks],
            "tokens_sha256": ["x"],
            "seed": [0],
            "created_at": [None],
        }
    )


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store(tmp_path / "store")
    write_partition(store, "corpora", "a", _corpora_row("a", 1))
    write_partition(store, "corpora", "b", _corpora_row("b", 2))
    return store


def test_rewriting_a_partition_replaces_it(store: Store) -> None:
    write_partition(store, "corpora", "a", _corpora_row("a", 7))
    assert sorted(p.name for p in (store.tables_dir / "corpora").iterdir()) == [
        ".a.parquet.sha256",
        ".b.parquet.sha256",
        "a.parquet",
        "b.parquet",
    ]
    assert run_sql(store, "SELECT corpus, n_blocks FROM corpora ORDER BY corpus").rows == [("a", 7), ("b", 2)]
    assert read_table(store, "corpora").height == 2


def test_schema_is_enforced(store: Store) -> None:
    with pytest.raises(CircuitDBError, match="missing columns"):
        write_partition(store, "corpora", "c", pl.DataFrame({"corpus": ["c"]}))


@pytest.mark.parametrize(
    "sql",
    [
        "DROP VIEW corpora",
        "CREATE TABLE t AS SELECT 1",
        "INSERT INTO corpora SELECT * FROM corpora",
        "UPDATE corpora SET seed = 1",
        "DELETE FROM corpora",
        "COPY (SELECT 1) TO 'x.csv'",
        "ATTACH 'x.db'",
        "INSTALL httpfs",
        "LOAD httpfs",
        "PRAGMA version",
        "SET enable_external_access = true",
        "EXPORT DATABASE 'dump'",
        "SELECT 1; DROP VIEW corpora",
    ],
)
def test_writes_are_refused(store: Store, sql: str) -> None:
    with pytest.raises(CircuitDBError):
        run_sql(store, sql)
    assert run_sql(store, "SELECT count(*) FROM corpora").rows == [(2,)]
    assert not any(p.suffix in (".csv", ".db") for p in store.root.rglob("*"))


def test_files_outside_the_store_are_unreadable(store: Store, tmp_path: Path) -> None:
    outside = tmp_path / "secret.csv"
    outside.write_text("a\n1\n")
    with pytest.raises(CircuitDBError, match="SQL error"):
        run_sql(store, f"SELECT * FROM read_csv('{outside}')")


def test_malformed_sql(store: Store) -> None:
    with pytest.raises(CircuitDBError, match="malformed SQL"):
        run_sql(store, "SELEC 1")
    with pytest.raises(CircuitDBError, match="SQL error"):
        run_sql(store, "SELECT * FROM no_such_table")


def test_queries_run_while_partitions_are_rewritten(store: Store) -> None:
    stop = threading.Event()

    def writer() -> None:
        blocks = 0
        while not stop.is_set():
            blocks += 1
            write_partition(store, "corpora", "a", _corpora_row("a", blocks))

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(30):
            assert run_sql(store, "SELECT count(*) FROM corpora").rows == [(2,)]
    finally:
        stop.set()
        thread.join()


def test_a_kept_catalog_sees_every_change_of_the_files(store: Store) -> None:
    """The viewer's catalog binds a table once and again only when its files change: a rewritten or a new
    partition is seen by the next query, a damaged one is named."""
    from query import engine

    engine.keep_catalog(store)
    try:
        assert run_sql(store, "SELECT sum(n_blocks) FROM corpora").rows == [(3,)]
        write_partition(store, "corpora", "a", _corpora_row("a", 7))
        assert run_sql(store, "SELECT sum(n_blocks) FROM corpora").rows == [(9,)]
        write_partition(store, "corpora", "c", _corpora_row("c", 1))
        assert run_sql(store, "SELECT sum(n_blocks) FROM corpora").rows == [(10,)]
        path = store.table_file("corpora", "c")
        path.write_bytes(path.read_bytes()[:-30])
        with pytest.raises(CircuitDBError, match="damaged file tables/corpora/c.parquet"):
            run_sql(store, "SELECT sum(n_blocks) FROM corpora")
    finally:
        engine._catalogs.pop(store.root)

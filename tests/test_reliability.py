"""Failures end in one line: a damaged file fails only the queries that read it, unexpected errors and
bad values are one `error:` line with a non-zero exit, and an export never deletes what it did not write."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest
import torch

from circuitdb.config import DictionaryConfig
from circuitdb.dictionaries import SparseCoder
from circuitdb.dictionaries.formats import read_dictionaries, write_dictionaries
from circuitdb.dictionaries.sets import DictionarySet
from circuitdb.errors import CircuitDBError
from circuitdb.store import TABLES, Store, read_table, write_partition


def _rows(table: str, n: int) -> pl.DataFrame:
    """`n` rows of `table` with every column null but the first (a row number)."""
    columns = {name: dtype for name, (dtype, _) in TABLES[table].columns.items()}
    first = next(iter(columns))
    frame = pl.DataFrame({name: pl.Series([None] * n, dtype=dtype) for name, dtype in columns.items()})
    return frame.with_columns(pl.Series(first, [str(i) for i in range(n)]).cast(columns[first]))


@pytest.fixture(params=["checksummed", "written-before-checksums"])
def damaged(tmp_path: Path, request: pytest.FixtureRequest) -> Store:
    """A store whose `features` table has one truncated partition among two; `corpora` is whole. Without its
    checksum, the damage is found by the Parquet reader instead (same message)."""
    store = Store(tmp_path / "store")
    write_partition(store, "corpora", "demo", _rows("corpora", 2))
    write_partition(store, "features", "plt-layer-000", _rows("features", 3))
    write_partition(store, "features", "plt-layer-001", _rows("features", 4))
    path = store.table_file("features", "plt-layer-000")
    path.write_bytes(path.read_bytes()[:-20])
    if request.param == "written-before-checksums":
        for sidecar in path.parent.glob(".*.sha256"):
            sidecar.unlink()
    return store


DAMAGED = "error: damaged file tables/features/plt-layer-000.parquet: "
REBUILD = "re-materialize partition plt-layer-000 of table features"


def test_a_damaged_file_fails_only_its_readers(damaged: Store, cli) -> None:
    store = ("--store", str(damaged.root))
    code, out, err = cli("sql", "select count(*) as n from corpora", "-f", "csv", *store)
    assert (code, out, err) == (0, "n\r\n2\r\n", "")
    code, out, err = cli("sql", "select count(*) from features", *store)
    assert code == 1 and out == "" and len(err.splitlines()) == 1, err
    assert err.startswith(DAMAGED) and REBUILD in err, err
    code, out, err = cli("tables", "-f", "json", *store)
    assert code == 1 and '"corpora"' in out and '"features"' not in out
    assert err.startswith(DAMAGED) and len(err.splitlines()) == 1
    with pytest.raises(CircuitDBError, match="damaged file tables/features/plt-layer-000.parquet"):
        read_table(damaged, "features")
    assert read_table(damaged, "corpora").height == 2


def test_a_query_binds_only_the_tables_it_names(damaged: Store) -> None:
    from circuitdb.store import connect

    con = connect(damaged, "select * from corpora c join corpora d using (corpus)")
    assert {row[0] for row in con.execute("select view_name from duckdb_views() where not internal").fetchall()} == {
        "corpora"
    }


def test_an_unexpected_failure_is_one_line_and_debug_shows_the_traceback(damaged: Store, cli, monkeypatch) -> None:
    import query.cli.store

    def broken(*_args, **_kwargs):
        raise ValueError("something inside broke\nsecond line")

    monkeypatch.setattr(query.cli.store, "run_sql", broken)
    code, _, err = cli("sql", "select 1", "--store", str(damaged.root))
    assert code == 1 and err == "error: ValueError: something inside broke (run with --debug for the traceback)\n"
    with pytest.raises(ValueError, match="something inside broke"):
        cli("--debug", "sql", "select 1", "--store", str(damaged.root))
    monkeypatch.setenv("CIRCUITDB_DEBUG", "1")
    with pytest.raises(ValueError, match="something inside broke"):
        cli("sql", "select 1", "--store", str(damaged.root))


def test_a_missing_file_is_named(damaged: Store, cli, monkeypatch) -> None:
    import query.cli.store

    def missing(*_args, **_kwargs):
        raise FileNotFoundError(2, "No such file or directory", "/nowhere/file.json")

    monkeypatch.setattr(query.cli.store, "run_sql", missing)
    code, _, err = cli("sql", "select 1", "--store", str(damaged.root))
    assert (code, err) == (1, "error: No such file or directory: /nowhere/file.json\n")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["search", "similar", "plt/1/0", "--k", "0"], "'--k': Input should be greater than or equal to 1"),
        (["search", "similar", "plt/1/0", "--k", "1000000000"], "'--k': Input should be less than or equal to 10000"),
        (["feature", "top", "--k", "1000000000000"], "'--k': Input should be less than or equal to 10000"),
        (["feature", "show", "plt/1/0", "--exemplars", "-1"], "'--exemplars': Input should be greater than or equal"),
        (["search", "similar", "plt/1/0", "--min-density", "2"], "'--min-density': Input should be less than or"),
        (["graph", "show", "slug", "--depth", "-1"], "'--depth': Input should be greater than or equal to 1"),
        (["graph", "show", "slug", "--width", "0"], "'--width': Input should be greater than or equal to 1"),
        (["graph", "edges", "slug", "--to", "x", "--k", "0"], "'--k': Input should be greater than or equal to 1"),
        (["search", "similar", "plt/1/0", "--layer-min", "20", "--layer-max", "10"], "--layer-min 20 is above"),
        (["search", "similar", "plt/1/0", "--min-density", "0.5", "--max-density", "0.1"], "--min-density 0.5 is"),
        (["build", "--layers", "0,,1"], "harvest.layers: an empty item"),
        (["sql"], "Missing argument 'query'"),
        (["sql", "select 1", "--bogus"], "No such option: --bogus"),
    ],
)
def test_bad_values_are_refused_before_any_work(args: list[str], message: str, tmp_path: Path, cli) -> None:
    code, out, err = cli(*args, "--store", str(tmp_path / "never-made"))
    assert code in (1, 2) and out == "" and len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert message in err, err
    assert not (tmp_path / "never-made").exists()


def _one_layer_set() -> DictionarySet:
    torch.manual_seed(0)
    coder = SparseCoder(DictionaryConfig(kind="plt", n_latents=16, k=2), 8, 8)
    return DictionarySet(name="plt", format="circuitdb", coders={0: coder, 1: coder}, model="tiny")


def test_an_export_never_deletes_what_it_did_not_write(tmp_path: Path) -> None:
    out = tmp_path / "exported"
    out.mkdir(mode=0o750)
    out.chmod(0o750)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(CircuitDBError, match="is not empty; pass --overwrite"):
        write_dictionaries(_one_layer_set(), "circuit-tracer", out)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    write_dictionaries(_one_layer_set(), "circuit-tracer", out, overwrite=True)
    write_dictionaries(_one_layer_set(), "circuit-tracer", out, overwrite=True)  # replaces its own files
    assert (out / "notes.txt").read_text() == "mine" and out.stat().st_mode & 0o777 == 0o750
    assert read_dictionaries(out).layers == [0, 1]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left
    with pytest.raises(CircuitDBError, match="is a file, not a folder"):
        write_dictionaries(_one_layer_set(), "circuit-tracer", out / "notes.txt", overwrite=True)
    with pytest.raises(CircuitDBError, match="does not exist"):
        write_dictionaries(_one_layer_set(), "circuit-tracer", tmp_path / "missing" / "out")


@pytest.fixture
def store_copy(built_store: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(built_store, tmp_path / "store"))


def _flip_a_byte(path: Path, offset_from_end: int = 200) -> None:
    """Change one byte in place: same size, same name (a disk or memory error, not a rewrite)."""
    data = bytearray(path.read_bytes())
    data[len(data) - offset_from_end] ^= 0x01
    with open(path, "r+b") as handle:
        handle.write(data)


def test_a_clean_store_checks_clean(store_copy: Path, cli) -> None:
    code, out, err = cli("check", "--store", str(store_copy))
    assert code == 0 and out == "", err
    assert " files checked: 0 damaged or missing, 0 without a checksum" in err
    assert int(err.split(" files checked")[0].split()[-1]) > 50  # tables, shards, manifests, weights, graphs


@pytest.mark.parametrize(
    ("pick", "rebuild"),
    [
        (
            lambda s: sorted((s / "tables" / "features").glob("*.parquet"))[1],
            "partition plt-layer-001 of table features",
        ),
        (lambda s: s / "dictionaries" / "plt" / "layer_2" / "weights.safetensors", "dictionary set plt, layer 2"),
        (lambda s: sorted((s / "graphs").glob("*.json"))[0], "graph "),
        (lambda s: sorted((s / "activations").glob("*-train/mlp_in.1/shard-*"))[0], "hook mlp_in.1"),
    ],
    ids=["partition", "weights", "graph", "shard"],
)
def test_check_names_every_damaged_file_and_what_to_rebuild(store_copy: Path, pick, rebuild: str, cli) -> None:
    damaged = pick(store_copy)
    _flip_a_byte(damaged)
    code, out, err = cli("check", "--store", str(store_copy), "-f", "json")
    (row,) = json.loads(out)
    assert code == 1 and row["file"] == str(damaged.relative_to(store_copy)) and rebuild in row["rebuild"]
    assert row["problem"].startswith("checksum mismatch") and err.splitlines()[-1].startswith("error: 1 damaged")


def test_reads_verify_checksums(store_copy: Path, cli) -> None:
    """Each kind of artifact is verified where it is read, and the error names the file."""
    from circuitdb.dictionaries.data import ActivationSource
    from circuitdb.dictionaries.stored import stored_set

    store = Store(store_copy)
    partition = store.table_file("exemplars", "plt-layer-001")
    _flip_a_byte(partition)
    code, _, err = cli("sql", "select count(*) from exemplars", "--store", str(store_copy))
    assert code == 1 and err.startswith("error: damaged file tables/exemplars/plt-layer-001.parquet: checksum mismatch")
    assert cli("sql", "select count(*) from features", "--store", str(store_copy))[0] == 0
    with pytest.raises(CircuitDBError, match="damaged file tables/exemplars/plt-layer-001.parquet"):
        read_table(store, "exemplars")

    weights = store_copy / "dictionaries" / "plt" / "layer_1" / "weights.safetensors"
    _flip_a_byte(weights)
    with pytest.raises(CircuitDBError, match="damaged file dictionaries/plt/layer_1/weights.safetensors"):
        stored_set(store, "plt")

    graph = sorted((store_copy / "graphs").glob("*.json"))[0]
    graph.write_bytes(graph.read_bytes()[:-100])  # truncated
    code, _, err = cli(
        "graph", "export", graph.stem, "--out", str(store_copy.parent / "g.json"), "--store", str(store_copy)
    )
    assert code == 1 and f"damaged file graphs/{graph.name}" in err and not (store_copy.parent / "g.json").exists()

    run = next((store_copy / "activations").glob("*-train"))
    shard = sorted((run / "mlp_in.0").glob("shard-*"))[0]
    _flip_a_byte(shard)
    source = ActivationSource(run, ["mlp_in.0"], [])
    with pytest.raises(CircuitDBError, match=f"damaged file activations/{run.name}/mlp_in.0/{shard.name}"):
        source.read(torch.arange(2))


def test_a_verified_file_is_hashed_again_only_when_it_changes(store_copy: Path, monkeypatch) -> None:
    from circuitdb.store import integrity

    hashed = []
    real = integrity.digest_file
    monkeypatch.setattr(integrity, "digest_file", lambda path: hashed.append(path) or real(path))
    monkeypatch.setattr(integrity, "_remembered", {})
    path = Store(store_copy).table_file("features", "plt-layer-000")
    integrity.verify(store_copy, path)
    integrity.verify(store_copy, path)
    monkeypatch.setattr(integrity, "_remembered", {})  # a new process: the store's .verified remembers
    integrity.verify(store_copy, path)
    assert hashed == [path]
    _flip_a_byte(path)
    with pytest.raises(CircuitDBError, match="checksum mismatch"):
        integrity.verify(store_copy, path)


def test_files_written_before_checksums_are_read_and_listed(store_copy: Path, cli) -> None:
    sidecar = Store(store_copy).table_file("corpora", "demo").parent
    (legacy,) = [p for p in sidecar.glob(".*.sha256")]
    legacy.unlink()
    assert cli("sql", "select count(*) from corpora", "--store", str(store_copy))[0] == 0
    code, out, err = cli("check", "--store", str(store_copy), "-f", "json")
    (row,) = json.loads(out)
    assert code == 0 and row["problem"].startswith("no checksum") and "1 without a checksum" in err


def test_a_second_build_skips_finished_work_and_redoes_only_the_damaged(built_store: Path, tmp_path: Path) -> None:
    """Finished partitions whose inputs did not change are skipped; a damaged weights file or shard is
    rebuilt (to the same bytes); a changed recipe retrains."""
    from circuitdb.config import load_config
    from circuitdb.project import Project
    from orchestration.build import build_all

    copy = Path(shutil.copytree(built_store, tmp_path / "store"))
    config = load_config(built_store.parent / "circuitdb.yaml", {"store": str(copy)})
    weights = {layer: copy / "dictionaries" / "plt" / f"layer_{layer}" / "weights.safetensors" for layer in range(3)}
    original = {layer: path.read_bytes() for layer, path in weights.items()}
    features = Store(copy).table_file("features", "plt-layer-000")
    shard = sorted((copy / "activations").glob("*-train/mlp_in.2/shard-*"))[0]
    shard_bytes = shard.read_bytes()

    def written() -> dict[str, int]:
        return {str(p): p.stat().st_mtime_ns for p in [*weights.values(), features, shard]}

    before = written()
    build_all(Project(config))
    assert written() == before  # nothing trained, encoded or harvested again

    _flip_a_byte(weights[1])
    _flip_a_byte(shard)
    build_all(Project(config))
    after = written()
    assert [after[str(weights[layer])] != before[str(weights[layer])] for layer in range(3)] == [False, True, False]
    assert weights[1].read_bytes() == original[1] and shard.read_bytes() == shard_bytes  # rebuilt, identical

    import dataclasses

    retrained = dataclasses.replace(
        config,
        dictionaries=dataclasses.replace(
            config.dictionaries, train=dataclasses.replace(config.dictionaries.train, epochs=3)
        ),
    )
    build_all(Project(retrained))
    assert all(weights[layer].read_bytes() != original[layer] for layer in range(3))

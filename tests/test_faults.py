"""A store on a flaky object store: the S3 server behind a proxy that resets connections, answers 503 SlowDown,
cuts bodies short, stalls and refuses connections for a while. Every command either completes with the same
result as without faults or fails with one `error:` line and nothing half-visible; a clean re-run completes."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import uuid
from pathlib import Path

import boto3
import pytest

from circuitdb.config import ObjectStoreConfig
from circuitdb.errors import CircuitDBError
from circuitdb.store import atomic_write_bytes
from circuitdb.store.remote import Mirror
from tests.fault_proxy import Fault, FaultProxy

QUICK = ObjectStoreConfig(retry_seconds=20, request_timeout=1, threads=4)
"""Retries long enough for every burst below, a timeout short enough that a stall costs a second."""


@pytest.fixture
def proxy(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch):
    """A fault-injecting proxy in front of the session's S3 server; clients reach the server through it."""
    faults = FaultProxy(s3_endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL", faults.endpoint)
    yield faults
    faults.stop()


@pytest.fixture
def uri(s3_endpoint: str) -> str:
    bucket = f"faults-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    return f"s3://{bucket}/store"


def _mirror(uri: str, cache: Path, monkeypatch: pytest.MonkeyPatch, settings: ObjectStoreConfig = QUICK) -> Mirror:
    monkeypatch.setenv("CIRCUITDB_CACHE", str(cache))
    return Mirror(uri, settings)


def _files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and not p.name.startswith(".sync") and not p.name.endswith(".tmp")
    }


def test_a_push_that_cannot_upload_fails_naming_the_files_and_readers_keep_the_previous_store(
    proxy: FaultProxy, uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = _mirror(uri, tmp_path / "writer", monkeypatch, ObjectStoreConfig(retry_seconds=3, request_timeout=1))
    atomic_write_bytes(writer.root / "tables/dictionaries/plt-layer-000.parquet", b"version one")
    atomic_write_bytes(writer.root / "dictionaries/plt/layer_0/weights.safetensors", os.urandom(300_000))
    writer.push()
    first = _files(writer.root)

    atomic_write_bytes(writer.root / "tables/dictionaries/plt-layer-000.parquet", b"version two, naming new weights")
    atomic_write_bytes(writer.root / "dictionaries/plt/layer_0/weights.safetensors", os.urandom(300_000))
    proxy.inject(Fault("reset", times=None, method="PUT", min_bytes=100_000))  # every large upload
    with pytest.raises(CircuitDBError, match="1 of 4 changed files were not uploaded.*layer_0/weights.safetensors"):
        writer.push()

    reader = _mirror(uri, tmp_path / "reader", monkeypatch)
    reader.pull(large=True)
    assert _files(reader.root) == first  # the previous store, whole: no new table beside old weights

    proxy.clear()
    assert writer.push() == 4  # a later push publishes what is still missing
    reader.pull(large=True)
    assert _files(reader.root) == _files(writer.root)
    assert proxy.injected["reset"] >= 1


def test_passing_faults_are_ridden_out_with_identical_results(
    proxy: FaultProxy, uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = _mirror(uri, tmp_path / "writer", monkeypatch)
    for i in range(6):
        atomic_write_bytes(writer.root / f"tables/features/plt-layer-{i:03d}.parquet", os.urandom(2_000 + i))
    atomic_write_bytes(
        writer.root / "activations/run/mlp_in.0/shard-00000.safetensors", os.urandom(9_000_000)
    )  # multipart
    proxy.inject(
        Fault("slowdown", times=4, retry_after=0.2),
        Fault("reset", times=3, method="PUT"),
        Fault("stall", times=1, seconds=4),
    )
    writer.push()
    proxy.inject(Fault("truncate", times=2, method="GET", min_bytes=1_000), Fault("reset", times=2, method="GET"))
    reader = _mirror(uri, tmp_path / "reader", monkeypatch)
    reader.pull(large=True)
    assert _files(reader.root) == _files(writer.root)
    assert {kind: proxy.injected[kind] for kind in ("slowdown", "reset", "stall", "truncate")} == {
        "slowdown": 4,
        "reset": 5,
        "stall": 1,
        "truncate": 2,
    }


def test_an_outage_within_the_budget_is_waited_out_and_a_longer_one_ends_in_one_line(
    proxy: FaultProxy, uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli
) -> None:
    writer = _mirror(uri, tmp_path / "writer", monkeypatch)
    writer.root.joinpath("tables/corpora").mkdir(parents=True)
    import polars as pl

    pl.DataFrame({"name": ["c"], "n_tokens": [7]}).write_parquet(writer.root / "tables/corpora/all.parquet")
    writer.push()
    monkeypatch.setenv("CIRCUITDB_CACHE", str(tmp_path / "cli"))
    config = tmp_path / "circuitdb.yaml"
    question = ("sql", "select n_tokens from corpora", "--config", str(config), "-f", "json")

    config.write_text(f"store: {uri}\nobject_store:\n  retry_seconds: 30\n  request_timeout: 2\n")
    proxy.refuse(1.5)
    code, out, err = cli(*question)
    assert code == 0 and json.loads(out) == [{"n_tokens": 7}], err

    config.write_text(f"store: {uri}\nobject_store:\n  retry_seconds: 2\n  request_timeout: 2\n")
    proxy.refuse(30)
    started = time.monotonic()
    code, out, err = cli(*question)
    assert code == 1 and out == "" and time.monotonic() - started < 10
    assert err.count("\n") == 1 and err.startswith("error: object store") and "connection refused" in err, err


def test_two_writers_on_one_prefix_keep_each_file_beside_its_own_checksum(
    s3_endpoint: str, uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writers = [_mirror(uri, tmp_path / f"writer-{w}", monkeypatch) for w in range(2)]
    rounds = 6

    def work(w: int) -> None:
        for r in range(rounds):
            atomic_write_bytes(
                writers[w].root / "dictionaries/plt/layer_0/config.json", f"writer {w} round {r}".encode()
            )
            atomic_write_bytes(writers[w].root / f"tables/own/writer-{w}-round-{r}.parquet", os.urandom(100))
            writers[w].push()

    threads = [threading.Thread(target=work, args=(w,)) for w in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    reader = _mirror(uri, tmp_path / "reader", monkeypatch)
    reader.pull(large=True)
    files = _files(reader.root)
    config = files["dictionaries/plt/layer_0/config.json"]
    assert files["dictionaries/plt/layer_0/.config.json.sha256"] == (hashlib.sha256(config).hexdigest() + "\n").encode()
    own = {rel for rel in files if rel.startswith("tables/own/") and not rel.rsplit("/", 1)[1].startswith(".")}
    assert len(own) == 2 * rounds  # neither writer lost a file to the other's commits


def test_a_build_whose_uploads_fail_exits_non_zero_and_a_clean_rerun_completes(
    proxy: FaultProxy, uri: str, tmp_path: Path, llama_dir: Path, text_file: Path, tiny_dictionaries: str, cli
) -> None:
    config = tmp_path / "circuitdb.yaml"
    config.write_text(
        f"store: {uri}\nobject_store:\n  retry_seconds: 2\n  request_timeout: 2\nmodel:\n  spec: {llama_dir}\n"
        f"corpus:\n  source: {text_file}\n  context: 16\n  max_tokens: 256\n" + tiny_dictionaries
    )
    os.environ["CIRCUITDB_CACHE"] = str(tmp_path / "first-machine")
    proxy.inject(Fault("reset", times=None, method="PUT", min_bytes=20_000))  # activation shards, weights
    code, out, err = cli("build", "--config", str(config))
    last = err.strip().splitlines()[-1]  # after the progress bars
    assert code == 1 and err.count("error:") == 1 and last.startswith("error:") and "were not uploaded" in last, err

    os.environ["CIRCUITDB_CACHE"] = str(tmp_path / "reader")
    code, out, err = cli("check", "--config", str(config))  # what was published is whole
    assert code == 0 and "damaged" not in out, out + err

    proxy.clear()
    os.environ["CIRCUITDB_CACHE"] = str(tmp_path / "first-machine")
    code, out, err = cli("build", "--config", str(config))
    assert code == 0 and "asset checks: 12 passed, 0 failed" in out, err
    os.environ["CIRCUITDB_CACHE"] = str(tmp_path / "second-machine")
    code, out, _ = cli("sql", "select count(*) n from features", "--config", str(config), "-f", "json")
    assert code == 0 and json.loads(out) == [{"n": 3 * 64}]


def test_in_dagster_a_step_that_cannot_publish_fails(
    proxy: FaultProxy, uri: str, tmp_path: Path, text_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dagster as dg

    from assets.corpus import corpus_tokens
    from assets.resources import ProjectResource

    config = tmp_path / "circuitdb.yaml"
    config.write_text(
        f"store: {uri}\nobject_store:\n  retry_seconds: 1\n"
        f"corpus:\n  source: {text_file}\n  context: 16\n  max_tokens: 256\n"
    )
    monkeypatch.setenv("CIRCUITDB_CACHE", str(tmp_path / "mirror"))
    proxy.inject(Fault("reset", times=None, method="PUT"))
    resources = {"project": ProjectResource(config_file=str(config))}
    result = dg.materialize([corpus_tokens], resources=resources, raise_on_error=False)
    failures = [event for event in result.all_events if event.is_step_failure]
    assert not result.success and len(failures) == 1  # the step, not a teardown event of a successful run
    assert "were not uploaded" in failures[0].step_failure_data.error.to_string()

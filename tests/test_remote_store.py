"""A store in an S3 bucket (a real S3-compatible server on 127.0.0.1): the mirror's synchronization, a
killed upload, read-only queries, and a second machine resuming from what the first published."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3

from circuitdb.store.remote import Mirror
from tests.conftest import upload_store


def _bucket(uri: str) -> dict[str, tuple[str, object]]:
    """Every object under the store's prefix, with its ETag and time: what a reader could see."""
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/")
    return {
        o["Key"][len(prefix) + 1 :]: (o["ETag"], o["LastModified"]) for page in pages for o in page.get("Contents", [])
    }


def _objects(uri: str) -> dict[str, str]:
    """The committed store: each file's SHA-256 by store-relative path, read from the bucket's index."""
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    try:
        body = boto3.client("s3").get_object(Bucket=bucket, Key=f"{prefix}/index.json")["Body"].read()
    except boto3.client("s3").exceptions.NoSuchKey:
        return {}
    return {rel: sha for rel, (sha, _) in json.loads(body)["files"].items()}


def _mirror(uri: str, cache: Path) -> Mirror:
    os.environ["CIRCUITDB_CACHE"] = str(cache)
    return Mirror(uri)


def test_the_mirror_publishes_changes_deletions_and_fetches_large_files_when_read(s3_store: str, tmp_path: Path):
    writer = _mirror(s3_store, tmp_path / "a")
    (writer.root / "tables/features").mkdir(parents=True)
    (writer.root / "tables/features/plt-layer-000.parquet").write_bytes(b"rows")
    (writer.root / "tables/features/.plt-layer-000.parquet.sha256").write_text("x\n")
    (writer.root / "dictionaries/plt/layer_0").mkdir(parents=True)
    (writer.root / "dictionaries/plt/layer_0/weights.safetensors").write_bytes(b"w" * 1000)
    (writer.root / ".verified").write_text("local only")
    (writer.root / "tables/features/.plt-layer-000.parquet.123.tmp").write_text("a writer at work")
    (writer.root / ".staging.abc").mkdir()
    (writer.root / ".staging.abc/weights.safetensors").write_text("half written")
    assert writer.push() == 3
    assert set(_objects(s3_store)) == {
        "tables/features/plt-layer-000.parquet",
        "tables/features/.plt-layer-000.parquet.sha256",
        "dictionaries/plt/layer_0/weights.safetensors",
    }
    assert writer.push() == 0  # nothing changed since

    reader = _mirror(s3_store, tmp_path / "b")
    assert reader.pull() == 2  # the small files; weights come when read
    assert (reader.root / "tables/features/plt-layer-000.parquet").read_bytes() == b"rows"
    weights = reader.root / "dictionaries/plt/layer_0/weights.safetensors"
    assert not weights.exists() and reader.fetch(weights) and weights.read_bytes() == b"w" * 1000
    assert not reader.fetch(reader.root / "dictionaries/plt/layer_9/weights.safetensors")

    (writer.root / "tables/features/plt-layer-000.parquet").write_bytes(b"new rows")
    weights_there = writer.root / "dictionaries/plt/layer_0/weights.safetensors"
    weights_there.write_bytes(b"v" * 1000)
    (writer.root / "tables/features/.plt-layer-000.parquet.sha256").unlink()
    assert writer.push() == 2
    assert reader.pull() == 1
    assert (reader.root / "tables/features/plt-layer-000.parquet").read_bytes() == b"new rows"
    assert not (reader.root / "tables/features/.plt-layer-000.parquet.sha256").exists()  # deleted there
    assert not weights.exists()  # stale: dropped, fetched again when read
    assert reader.fetch(weights) and weights.read_bytes() == b"v" * 1000


PUSH_BIG_FILE = """
import os, sys
from circuitdb.store.remote import Mirror
mirror = Mirror(sys.argv[1])
(mirror.root / "activations").mkdir(parents=True, exist_ok=True)
(mirror.root / "activations/shard-00000.safetensors").write_bytes(os.urandom(192 * 2**20))
print("pushing", flush=True)
mirror.push()
"""


def test_a_killed_upload_leaves_no_object(s3_store: str, tmp_path: Path) -> None:
    bucket = s3_store.removeprefix("s3://").split("/")[0]
    client = boto3.client("s3")
    env = dict(os.environ, CIRCUITDB_CACHE=str(tmp_path / "killed"))
    pusher = subprocess.Popen([sys.executable, "-c", PUSH_BIG_FILE, s3_store], env=env, stdout=subprocess.PIPE)
    assert pusher.stdout.readline() == b"pushing\n"
    deadline = time.monotonic() + 60
    while not client.list_multipart_uploads(Bucket=bucket).get("Uploads"):
        assert time.monotonic() < deadline and pusher.poll() is None, "the upload finished before it was seen"
        time.sleep(0.01)
    pusher.send_signal(signal.SIGKILL)
    pusher.wait()
    assert _bucket(s3_store) == {}  # parts were sent, yet no object is visible


def test_queries_on_s3_are_read_only_and_answer_as_on_the_folder(
    built_store: Path, s3_store: str, tmp_path: Path, cli
) -> None:
    upload_store(built_store, s3_store, tmp_path / "writer")
    before = _bucket(s3_store)
    questions = [
        ("sql", "select dictionary, layer, count(*) n, sum(density) d from features group by all order by all"),
        ("feature", "top", "--layer", "2", "--k", "4", "-f", "json"),
        ("search", "similar", "plt/1/0", "--k", "4", "-f", "json"),
        ("graph", "list", "-f", "json"),
    ]
    for question in questions:
        on_folder = cli(*question, "--store", str(built_store))
        on_s3 = cli(*question, "--store", s3_store)
        assert on_s3[:2] == on_folder[:2] and on_s3[0] == 0, (question, on_s3[2])
    outside = tmp_path / "outside.csv"
    for statement in (f"copy (select 1) to '{outside}'", "select * from read_csv('/etc/passwd')"):
        code, _, err = cli("sql", statement, "--store", s3_store)
        assert code != 0 and err.strip().startswith("error:"), err
    assert not outside.exists()
    assert _bucket(s3_store) == before  # queries wrote nothing to the bucket


def test_a_second_machine_resumes_from_what_the_first_published(
    s3_store: str, tmp_path: Path, llama_dir: Path, text_file: Path, tiny_dictionaries: str, cli
) -> None:
    config = tmp_path / "circuitdb.yaml"
    config.write_text(
        f"store: {s3_store}\nmodel:\n  spec: {llama_dir}\n"
        f"corpus:\n  source: {text_file}\n  context: 16\n  max_tokens: 256\n" + tiny_dictionaries
    )
    code, out, err = cli("build", "--config", str(config))
    assert code == 0 and "asset checks: 12 passed, 0 failed" in out, err
    first = _objects(s3_store)
    assert any(k.endswith("shard-00000.safetensors") for k in first) and any(k.startswith(".finished/") for k in first)

    os.environ["CIRCUITDB_CACHE"] = str(tmp_path / "second-machine")
    code, out, err = cli("build", "--config", str(config))
    assert code == 0 and "asset checks: 12 passed, 0 failed" in out, err
    second = _objects(s3_store)
    trained = [k for k in first if k.startswith("dictionaries/") and k.endswith(".safetensors")]
    changed = sorted(k for k in first if second.get(k) != first[k])
    assert len(trained) == 3 and not set(trained) & set(changed), changed  # skipped, not retrained
    code, out, _ = cli("sql", "select count(*) n from features", "--config", str(config), "-f", "json")
    assert code == 0 and json.loads(out) == [{"n": 3 * 64}]

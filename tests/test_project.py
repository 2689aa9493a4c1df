"""One Project under every face: the configuration parsed once, the store pulled on enter and pushed on exit
(also after a failure), the model loaded once, and questions that never import torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import boto3
import pytest

from circuitdb import config as config_module
from circuitdb.project import Project
from circuitdb.store import atomic_write_bytes


def test_a_config_file_is_parsed_once_per_process_and_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parsed = []
    real = config_module.yaml.safe_load
    monkeypatch.setattr(config_module.yaml, "safe_load", lambda text: parsed.append(text) or real(text))
    file = tmp_path / "circuitdb.yaml"
    file.write_text(f"store: {tmp_path / 'a'}\ncorpus:\n  context: 33\n")
    first, second = Project.open(file), Project.open(file, {"corpus.context": 40})
    assert (first.config.corpus.context, second.config.corpus.context) == (33, 40) and len(parsed) == 1
    file.write_text(f"store: {tmp_path / 'a'}\ncorpus:\n  context: 34\n")  # same size: only the text tells
    assert Project.open(file).config.corpus.context == 34 and len(parsed) == 2


def test_a_failed_step_still_publishes_what_it_finished(s3_store: str, tmp_path: Path) -> None:
    """On object storage, leaving the project pushes every whole file it wrote, also when the work failed."""
    project = Project.open(overrides={"store": s3_store})
    with pytest.raises(RuntimeError, match="midway"), project:
        atomic_write_bytes(project.store.root / "tables" / "corpora" / "default.parquet", b"finished rows")
        raise RuntimeError("failed midway")
    bucket, _, prefix = s3_store.removeprefix("s3://").partition("/")
    index = boto3.client("s3").get_object(Bucket=bucket, Key=f"{prefix}/index.json")["Body"].read()
    committed = json.loads(index)["files"]
    assert set(committed) == {"tables/corpora/default.parquet", "tables/corpora/.default.parquet.sha256"}


def test_the_model_is_loaded_once_per_process(llama_dir: Path, tmp_path: Path) -> None:
    overrides = {"store": str(tmp_path), "model.spec": str(llama_dir), "model.device": "cpu"}
    assert Project.open(overrides=overrides).model is Project.open(overrides=overrides).model


def test_questions_never_import_torch(built_store: Path) -> None:
    """A SQL question opens the project (config, store) without loading the model or its libraries."""
    script = (
        "import sys\nfrom query.cli import app\n"
        f"app(['sql', 'select count(*) as n from features', '--store', {str(built_store)!r}], standalone_mode=False)\n"
        "print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=built_store.parent)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1] == "False False"


def test_transcoders_are_kept_until_the_dictionaries_table_changes(built_store: Path, tmp_path: Path) -> None:
    """The viewer steers many times: the set is loaded once, and again once a dictionary is re-recorded."""
    import shutil

    from circuitdb.store import Store, read_table, write_partition

    store = Store(shutil.copytree(built_store, tmp_path / "store"))
    project = Project.open(overrides={"store": str(store.root)})
    first = project.transcoders("plt")
    assert project.transcoders("plt") is first and sorted(first.layers) == [0, 1, 2]
    partition = store.partition_files("dictionaries")[0].stem
    write_partition(store, "dictionaries", partition, read_table(store, "dictionaries", partitions=[partition]))
    assert project.transcoders("plt") is not first

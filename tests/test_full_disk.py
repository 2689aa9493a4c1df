"""A store on a disk that fills up (a small tmpfs, mounted for the test): harvest, training checkpoints, table and
graph writes, the mirror's downloads and a whole build end in one message naming what could not be written and
the space it needed; no partial file is left; the store checks clean; the same work completes once space is
freed. Needs root (mount); skipped where mounting is not allowed."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from circuitdb.config import CorpusConfig, DictionaryConfig, HarvestConfig, TrainConfig
from circuitdb.corpus import tokenize_corpus
from circuitdb.dictionaries import ActivationSource, train_dictionary
from circuitdb.errors import CircuitDBError
from circuitdb.harvest import harvest
from circuitdb.models import LoadedModel, resolve_hooks
from circuitdb.store import atomic_write_bytes
from circuitdb.store.remote import Mirror
from tests.conftest import upload_store


class SmallDisk:
    """A tmpfs of a given size at `path`; `resize` changes it in place (its files stay)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def mount(self, size: str) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(self.path)], check=True)

    def resize(self, size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(self.path)], check=True)

    def fill(self) -> None:
        """Take what space is left (a file of zeros), as another program would."""
        with open(self.path / "filler", "wb") as handle:
            try:
                while True:
                    handle.write(bytes(1 << 16))
                    handle.flush()
            except OSError:
                pass

    def leftovers(self) -> list[Path]:
        return [p for p in self.path.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".staging")]


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[SmallDisk]:
    small = SmallDisk(tmp_path / "disk")
    try:
        small.mount("2m")
    except (subprocess.CalledProcessError, FileNotFoundError, PermissionError):
        pytest.skip("mounting a tmpfs needs root")
    yield small
    subprocess.run(["umount", "-l", str(small.path)], check=False)


def test_a_table_or_graph_write_on_a_full_disk_keeps_the_old_file(disk: SmallDisk) -> None:
    target = disk.path / "store/tables/graphs/a-graph.parquet"
    atomic_write_bytes(target, b"the old rows")
    disk.fill()
    with pytest.raises(CircuitDBError, match=r"no space left to write .*a-graph.parquet \(it needs 1.0 MiB; 0 B free"):
        atomic_write_bytes(target, bytes(1 << 20))
    assert target.read_bytes() == b"the old rows" and disk.leftovers() == []
    (disk.path / "filler").unlink()
    atomic_write_bytes(target, bytes(1 << 20))
    assert target.stat().st_size == 1 << 20


def test_harvest_and_checkpoints_on_a_full_disk(disk: SmallDisk, llama: LoadedModel, text_file: Path) -> None:
    blocks = tokenize_corpus(llama, CorpusConfig(source=str(text_file), context=32, max_tokens=32 * 64)).blocks
    hooks = resolve_hooks(llama, ["mlp_in.1", "mlp_out.1"])
    run = disk.path / "run"
    disk.resize("100k")
    with pytest.raises(CircuitDBError, match=r"no space left to write .*shard-\d+\.safetensors \(it needs"):
        harvest(llama, blocks, hooks, run, HarvestConfig(batch_size=16, shard_mb=1), progress=False)
    assert disk.leftovers() == []
    disk.resize("8m")
    harvest(llama, blocks, hooks, run, HarvestConfig(batch_size=16, shard_mb=1), progress=False)

    source = ActivationSource(run, ["mlp_in.1"], ["mlp_out.1"])
    checkpoint = disk.path / "checkpoints/layer_1.pt"
    disk.fill()
    cfg = DictionaryConfig(kind="plt", n_latents=64, k=4)
    tcfg = TrainConfig(batch_size=64, epochs=1, checkpoint_every=2)
    with pytest.raises(CircuitDBError, match=r"no space left to write .*layer_1.pt \(it needs \d+\.\d KiB"):
        train_dictionary(cfg, source, tcfg, checkpoint=checkpoint, progress=False)
    assert disk.leftovers() == [] and not checkpoint.exists()
    (disk.path / "filler").unlink()
    trained = train_dictionary(cfg, source, tcfg, checkpoint=checkpoint, progress=False)
    assert torch.isfinite(trained.coder.W_dec).all()


def test_the_mirror_downloads_onto_a_full_disk(
    disk: SmallDisk, built_store: Path, s3_store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    upload_store(built_store, s3_store, tmp_path / "writer")
    monkeypatch.setenv("CIRCUITDB_CACHE", str(disk.path / "cache"))
    disk.resize("300k")
    with pytest.raises(
        CircuitDBError, match=r"no space left to write .*\(it needs [\d.]+ (B|KiB|MiB); [\d.]+ (B|KiB|MiB) free"
    ):
        Mirror(s3_store).pull(large=True)
    assert disk.leftovers() == []
    disk.resize("16m")
    Mirror(s3_store).pull(large=True)


def test_a_build_on_a_full_disk_ends_in_one_line_and_completes_once_space_is_freed(
    disk: SmallDisk, llama_dir: Path, text_file: Path, tiny_dictionaries: str, tmp_path: Path
) -> None:
    config = tmp_path / "circuitdb.yaml"
    config.write_text(
        f"store: {disk.path / 'store'}\nmodel:\n  spec: {llama_dir}\n  device: cpu\n"
        f"corpus:\n  source: {text_file}\n  context: 16\n  max_tokens: 256\n" + tiny_dictionaries
    )
    circuitdb = [str(Path(sys.executable).parent / "circuitdb")]
    env = dict(os.environ, CIRCUITDB_DEBUG="0")
    failed = subprocess.run([*circuitdb, "build", "--config", str(config)], capture_output=True, text=True, env=env)
    last = failed.stderr.strip().splitlines()[-1]
    assert failed.returncode == 1 and last.startswith("error: no space left") and failed.stderr.count("error:") == 1
    assert disk.leftovers() == []
    check = subprocess.run([*circuitdb, "check", "--config", str(config)], capture_output=True, text=True)
    assert check.returncode == 0 and "0 damaged or missing" in check.stdout + check.stderr, check.stderr

    disk.resize("64m")
    again = subprocess.run([*circuitdb, "build", "--config", str(config)], capture_output=True, text=True)
    assert again.returncode == 0 and "asset checks: 12 passed, 0 failed" in again.stdout, again.stderr[-2000:]

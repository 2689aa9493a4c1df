"""Where everything lives inside a store folder.

```
<store>/tables/<table>/<partition>.parquet   one file per asset partition, written atomically
<store>/activations/<run>/<hook>/shard-*.safetensors + manifest.json
<store>/dictionaries/<name>/    <store>/vectors/    <store>/graphs/<slug>.json
```
A store may live on object storage (`s3://bucket/prefix`): `root` is then its local mirror
(store/remote.py), brought in step by `pull` and published by `push`.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from circuitdb.config import ObjectStoreConfig
from circuitdb.store.integrity import replace_atomically, write_checksum
from circuitdb.store.remote import Mirror, is_remote, open_mirror


class Store:
    def __init__(self, root: str | Path, settings: ObjectStoreConfig | None = None) -> None:
        """`settings`: how an `s3://` store is reached (default: `ObjectStoreConfig()`)."""
        self.mirror: Mirror | None = open_mirror(str(root), settings) if is_remote(root) else None
        self.root = self.mirror.root if self.mirror else Path(root).expanduser().resolve()
        self.location = self.mirror.uri if self.mirror else str(self.root)
        """Where the store lives: its folder, or its object-store URI."""

    def pull(self, under: str = "", large: bool = False) -> None:
        """On object storage: bring the local mirror in step (large files only when `large`). Else nothing."""
        if self.mirror:
            self.mirror.pull(under, large)

    def push(self) -> None:
        """On object storage: publish what this process wrote, all or nothing (raises naming what could not
        be uploaded). Else nothing."""
        if self.mirror:
            self.mirror.push()

    def fetch(self, path: Path) -> bool:
        """Whether `path` (inside the store) exists, downloading it first on object storage."""
        return self.mirror.fetch(path) if self.mirror else path.exists()

    @property
    def tables_dir(self) -> Path:
        return self.root / "tables"

    def table_file(self, table: str, partition: str) -> Path:
        return self.tables_dir / table / f"{partition}.parquet"

    def activation_run(self, run: str) -> Path:
        return self.root / "activations" / run

    def dictionary_dir(self, name: str, layer: int) -> Path:
        return self.root / "dictionaries" / name / f"layer_{layer}"

    def partition_files(self, table: str) -> list[Path]:
        return sorted((self.tables_dir / table).glob("*.parquet"))

    def table_names(self) -> list[str]:
        """Tables that have at least one partition file."""
        if not self.tables_dir.is_dir():
            return []
        return sorted(d.name for d in self.tables_dir.iterdir() if d.is_dir() and _holds_parquet(d))


def _holds_parquet(folder: Path) -> bool:
    """Whether `folder` holds a Parquet file, stopping at the first (a graph table holds thousands)."""
    with os.scandir(folder) as entries:
        return any(entry.name.endswith(".parquet") for entry in entries)


def atomic_write_bytes(path: Path, data: bytes, checksum: bool = True) -> None:
    """Write `data` to `path` so readers see the old file or the new one, never a partial one; its
    checksum is recorded beside it (verified where it is read), unless the file is not the store's."""
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_atomically(path, data)
    if checksum:
        write_checksum(path, hashlib.sha256(data).hexdigest())

"""Finished partitions: a re-run skips the work whose inputs did not change and whose outputs are whole.

After a crash (or a second `circuitdb build`), every per-layer step would otherwise train and encode
again. A step that completes records `<store>/.finished/<step>/<partition>.json`: a fingerprint of
everything its result depends on (configuration, model, the checksums of the files it read) and the
files it wrote. The next run compares fingerprints and verifies those files (a damaged one is rebuilt).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from circuitdb.errors import CircuitDBError
from circuitdb.store.integrity import checksum_path, verify
from circuitdb.store.layout import Store, atomic_write_bytes


def fingerprint(*parts: object) -> str:
    """A digest of `parts` (JSON-able values: configs as dicts, names, checksums)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def recorded_checksum(path: Path) -> str:
    """The checksum recorded beside `path` when it was written ('' for a file without one)."""
    sidecar = checksum_path(path)
    return sidecar.read_text().strip() if sidecar.is_file() else ""


def _marker(store: Store, step: str, partition: str) -> Path:
    return store.root / ".finished" / step / f"{partition}.json"


def is_finished(store: Store, step: str, partition: str, inputs: str) -> bool:
    """Whether `step` already produced `partition` from these `inputs`, and its files are still whole."""
    marker = _marker(store, step, partition)
    if not marker.is_file():
        return False
    try:
        verify(store.root, marker)
        record = json.loads(marker.read_text())
        if record["inputs"] != inputs:
            return False
        for relative in record["outputs"]:
            path = store.root / relative
            if not store.fetch(path) or not checksum_path(path).is_file():
                return False
            verify(store.root, path)
    except (CircuitDBError, json.JSONDecodeError, KeyError):
        return False  # damaged: done again
    return True


def record_finished(store: Store, step: str, partition: str, inputs: str, outputs: list[Path]) -> None:
    """Mark `partition` of `step` finished from `inputs`, with the files it wrote."""
    record = {"inputs": inputs, "outputs": [str(path.relative_to(store.root)) for path in outputs]}
    atomic_write_bytes(_marker(store, step, partition), json.dumps(record, indent=1).encode())

"""The SHA-256 of a file: what checksums record and what names a file's object in a bucket."""

from __future__ import annotations

import hashlib
from pathlib import Path

CHUNK = 1 << 22
"""Bytes read (or streamed) at a time."""


def digest_file(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            sha.update(chunk)
    return sha.hexdigest()

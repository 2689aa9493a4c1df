"""A full disk ends a command in one line: what could not be written, how much it needed, how much is free.

Every write of the store is a temporary file renamed into place, removed again when the write fails, so a
full disk leaves the previous file (or none) and `circuitdb check` clean; what was finished before is kept,
and the same command completes once space is freed.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

from circuitdb.errors import CircuitDBError

_FULL = (errno.ENOSPC, errno.EDQUOT)
_FULL_IN_WORDS = ("No space left on device", "database or disk is full")
"""How libraries that raise their own errors say it: LanceDB and safetensors (Rust), SQLite (Dagster's runs)."""


def is_out_of_space(exc: BaseException) -> bool:
    """Whether `exc` says the disk (or the quota) is full."""
    return getattr(exc, "errno", None) in _FULL or any(words in str(exc) for words in _FULL_IN_WORDS)


def lacks_room(path: Path, needed: int) -> bool:
    """Whether the filesystem of `path` has less free space than `needed` bytes: a write that failed with a
    library's own error (torch's "iostream error") failed for that reason."""
    free = free_bytes(path)
    return free is not None and free < needed


def size_text(n_bytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n_bytes < 1024 or unit == "GiB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1024
    raise AssertionError("unreachable")


def free_bytes(path: Path) -> int | None:
    """Free space on the filesystem that holds `path` (or its nearest existing parent)."""
    for folder in [path, *path.parents]:
        if folder.exists():
            return shutil.disk_usage(folder).free
    return None


def out_of_space(path: Path, needed: int | None = None) -> CircuitDBError:
    """The error of a write of `path` (`needed` bytes, when known) that found no space."""
    free = free_bytes(Path(path))
    needs = f"it needs {size_text(needed)}; " if needed is not None else ""
    left = f"{size_text(free)} free there" if free is not None else "the disk is full"
    return CircuitDBError(
        f"no space left to write {path} ({needs}{left}): free some space and run the command again "
        "(what was finished is kept)"
    )

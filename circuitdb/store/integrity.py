"""Checksums of everything the store writes, verified where it is read.

Each artifact (a table's partition file, dictionary weights, a graph's JSON, an activation shard) gets a
sidecar `.<name>.sha256` written right after it, so a bit flip, a truncation or an overwrite is found
before the file is used, naming the file. Hashing hundreds of MB on every query would be slow, so a
file whose checksum matched is remembered in `<store>/.verified` with its size, mtime, ctime and
inode: any write to the file changes its ctime (which no user call can set back), and then it is
hashed again. A store that is not writable is verified afresh by each process.

Files written before checksums existed have no sidecar: they are read as before, and `circuitdb
check` lists them as unverifiable.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

from circuitdb.errors import CircuitDBError
from circuitdb.store.digest import digest_file
from circuitdb.store.remote import mirror_at
from circuitdb.store.space import is_out_of_space, out_of_space

_CACHE = ".verified"
_COMPACT_BYTES = 1 << 20
_ATTEMPTS, _PAUSE = 10, 0.05
"""A mismatching file may be between its replace and its checksum's (a writer at work): it is hashed again
for up to half a second before it counts as damaged."""
_remembered: dict[Path, set[str]] = {}
"""Per store root: stat keys of files verified by this process or read from `.verified`."""


def checksum_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.sha256")


def ordinary_mode() -> int:
    """The mode an ordinary write would give a new file (mkstemp's own is owner-only)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def replace_atomically(path: Path, data: bytes) -> None:
    """Write `data` beside `path` and rename it over `path`: readers see the old file or the new one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, ordinary_mode())
        os.replace(tmp, path)
    except BaseException as failure:
        Path(tmp).unlink(missing_ok=True)
        if is_out_of_space(failure):
            raise out_of_space(path, len(data)) from None
        raise


def write_checksum(path: Path, digest: str | None = None) -> None:
    """Record `path`'s checksum (`digest`, when the writer already has it) beside it, atomically."""
    replace_atomically(checksum_path(path), ((digest or digest_file(path)) + "\n").encode())


class Problem(NamedTuple):
    path: Path
    """The damaged or unverifiable file."""
    problem: str
    """What is wrong, in a few words."""


def problem_with(path: Path) -> Problem | None:
    """What is wrong with `path` against its recorded checksum (no cache: `circuitdb check`)."""
    sidecar = checksum_path(path)
    if not path.is_file():
        return Problem(path, "missing")
    if not sidecar.is_file():
        return Problem(path, "no checksum recorded (written before checksums, or its writer was killed)")
    try:
        expected = sidecar.read_text().strip()
        actual = digest_file(path)
    except OSError as exc:
        return Problem(path, f"unreadable: {exc.strerror}")
    if actual != expected:
        return Problem(path, "checksum mismatch: changed or damaged since it was written")
    return None


def verify(root: Path, path: Path) -> None:
    """Raise one line naming `path` when it no longer matches the checksum recorded when it was written.
    Cheap after the first time: a verified file is remembered until it changes."""
    mirror = mirror_at(root)
    if mirror is not None:
        mirror.fetch(path)  # a store on object storage: large files come when first read
    sidecar = checksum_path(path)
    if not sidecar.is_file():
        return  # written before checksums: read as before (`circuitdb check` lists it)
    remembered = _remembered_for(root)
    key = _stat_key(root, path)
    if key in remembered:
        return
    for attempt in range(_ATTEMPTS):
        problem = problem_with(path)
        if problem is None:
            remembered.add(key)
            _remember(root, key)
            return
        if attempt < _ATTEMPTS - 1:
            time.sleep(_PAUSE)
    raise CircuitDBError(damaged_message(root, path, problem.problem))


def damaged_message(root: Path, path: Path, reason: str) -> str:
    return f"damaged file {path.relative_to(root)}: {reason}; {rebuild_hint(root, path)}"


def rebuild_hint(root: Path, path: Path) -> str:
    return (
        f"re-materialize {rebuild_target(root, path)} (`circuitdb build`; `circuitdb check` lists every damaged file)"
    )


def rebuild_target(root: Path, path: Path) -> str:
    """What to re-materialize to replace `path`."""
    parts = path.relative_to(root).parts
    if parts[0] == "tables":
        return f"partition {path.stem} of table {parts[1]}"
    if parts[0] == "dictionaries":
        return f"dictionary set {parts[1]}, {parts[2].replace('_', ' ')}"
    if parts[0] == "graphs":
        return f"graph {path.stem} (build its prompt again)"
    if parts[0] == "activations":
        return f"activations {parts[1]}, hook {parts[2]}"
    return str(path.relative_to(root))


def _stat_key(root: Path, path: Path) -> str:
    stat = path.stat()
    return f"{stat.st_size} {stat.st_mtime_ns} {stat.st_ctime_ns} {stat.st_ino} {path.relative_to(root)}"


def _remembered_for(root: Path) -> set[str]:
    if root not in _remembered:
        cache = root / _CACHE
        try:
            _remembered[root] = set(cache.read_text().splitlines()) if cache.is_file() else set()
        except OSError:
            _remembered[root] = set()
    return _remembered[root]


def _remember(root: Path, key: str) -> None:
    """Append the key (a small O_APPEND write is atomic, so concurrent readers cannot tear lines); when the
    file outgrows its use, keep only the keys of files as they are now."""
    cache = root / _CACHE
    try:
        with open(cache, "a") as handle:
            handle.write(key + "\n")
        if cache.stat().st_size > _COMPACT_BYTES:
            _compact(root, cache)
    except (OSError, CircuitDBError):
        pass  # a read-only or full store: this process remembers, the next one verifies again


def _compact(root: Path, cache: Path) -> None:
    current = set()
    for key in set(cache.read_text().splitlines()):
        path = root / key.split(" ", 4)[-1]
        if path.is_file() and _stat_key(root, path) == key:
            current.add(key)
    replace_atomically(cache, "".join(f"{key}\n" for key in sorted(current)).encode())


ARTIFACT_FOLDERS = ("tables", "activations", "dictionaries", "graphs")
"""Where the store's checksummed artifacts live (vectors are LanceDB's own files; checkpoints are scratch)."""


class Report(NamedTuple):
    n_files: int
    """Artifacts looked at."""
    problems: list[Problem]
    """The damaged, missing and unverifiable ones."""


def check_files(root: Path, prefixes: tuple[str, ...] = ARTIFACT_FOLDERS, progress: bool = False) -> Report:
    """Hash every artifact under `root`'s `prefixes` (relative folders such as `tables/features`) against its
    recorded checksum, without the cache: what `circuitdb check` and the Dagster asset checks report."""
    from tqdm.auto import tqdm

    files = sorted({path for prefix in prefixes for path in _artifacts(root / prefix)})
    problems = [p for path in tqdm(files, desc="check", unit="file", disable=not progress) if (p := problem_with(path))]
    return Report(len(files), problems)


def _artifacts(folder: Path) -> set[Path]:
    """Files under `folder`, and files whose checksum is there without them (removed since)."""
    found = set()
    for path in folder.rglob("*") if folder.is_dir() else ():
        hidden = any(part.startswith(".") for part in path.relative_to(folder).parts[:-1])
        if hidden or not path.is_file():
            continue
        if not path.name.startswith("."):
            found.add(path)
        elif path.name.endswith(".sha256"):
            found.add(path.with_name(path.name[1 : -len(".sha256")]))
    return found

"""A store on object storage (`store: s3://bucket/prefix`): a local mirror kept in step with the bucket.

Why a mirror and not every reader speaking S3: DuckDB's S3 support is an extension that cannot be
downloaded here, safetensors memory-maps files, the query sandbox is defined by folders, and every
write in the store is already a whole file replaced atomically. So the store works on a local folder
(`$CIRCUITDB_CACHE/<bucket>/<prefix>`, default `~/.cache/circuitdb`) and this module moves whole files.

What the bucket holds, and why a push is all or nothing:
```
<prefix>/objects/<sha256>   every file's bytes, named by their hash: written once, never overwritten
<prefix>/index.json         the committed store: {store-relative path: [sha256, size]}
```
- `push()` uploads the changed files as new objects (invisible: nothing names them yet), then commits by
  replacing `index.json` in one conditional PUT. If any upload fails, nothing is committed and the command
  fails naming the files: readers and later writers see the previous store whole, never a table that names
  missing shards, a checksum without its file or a LanceDB version without its manifest. A later push
  uploads what is still missing and commits. Objects no index names (a failed push's, replaced files') are
  deleted by a later push once they are a day old.
- Two writers on one prefix: the commit is a compare-and-swap on `index.json`'s ETag (If-Match). A writer
  that lost the race reads the new index, lays its own changes over it and tries again, so each file in the
  index is one writer's bytes with that writer's checksum beside it (a file and its checksum are written
  together), and neither writer's other files are lost.
- `pull()` reads the index (one GET) and downloads the small files whose hash changed (tables, manifests,
  checksums, configs, finished markers); large ones (activation shards, dictionary weights, graph JSON) are
  only dropped when stale, and fetched when first read (`fetch`, called by the integrity check that guards
  every read) or ahead of time (`prefetch`). A download is checked against its object's name.

Every request goes through `store/s3.py`: timeouts, and retries with backoff within `object_store.retry_seconds`.
Credentials and endpoint come from the usual environment (`AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT_URL`, ...).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import NamedTuple

from circuitdb.config import ObjectStoreConfig
from circuitdb.errors import CircuitDBError
from circuitdb.store.digest import CHUNK, digest_file
from circuitdb.store.s3 import DamagedTransfer, RequestFailed, Requests, client, error_code
from circuitdb.store.space import is_out_of_space, out_of_space

CACHE_ENV = "CIRCUITDB_CACHE"
INDEX, OBJECTS = "index.json", "objects/"
_STATE, _LOCK = ".sync.json", ".sync.lock"
_LOCAL_ONLY = {".verified", ".dagster", _STATE, _LOCK}
"""Per-machine files: the verification cache, a local Dagster home and this module's own records."""
_GARBAGE_AGE = timedelta(days=1)
"""Unnamed objects younger than this may belong to a push still under way: they are kept."""
_COMMIT_TRIES = 100


class Entry(NamedTuple):
    """One file of the committed store."""

    sha256: str
    size: int


class LocalChange(NamedTuple):
    """A file of the mirror that differs from what it was last synchronized as."""

    entry: Entry
    stat: list[int]
    """[size, mtime_ns] when it was hashed."""


def is_remote(location: str | Path) -> bool:
    return "://" in str(location)


def _split(uri: str) -> tuple[str, str]:
    scheme, _, rest = uri.partition("://")
    if scheme != "s3":
        raise CircuitDBError(f"unsupported store URI {uri!r}: use a folder or s3://bucket/prefix")
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise CircuitDBError(f"store URI {uri!r} names no bucket")
    return bucket, prefix.strip("/")


def cache_folder(uri: str) -> Path:
    bucket, prefix = _split(uri)
    base = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "circuitdb").expanduser()
    return (base / bucket / prefix).resolve()


def _synchronized(rel: str) -> bool:
    """Whether a store-relative path belongs in the bucket (not a temp file, a staging folder or local state)."""
    parts = rel.split("/")
    if parts[0] in _LOCAL_ONLY or parts[-1].endswith(".tmp"):
        return False
    return not any(p.startswith(".") and p != ".finished" for p in parts[:-1])


def _large(rel: str) -> bool:
    """Files fetched when read rather than with every pull."""
    return rel.endswith(".safetensors") or rel.startswith(("graphs/", "vectors/"))


def _few(failures: list[tuple[str, str]], shown: int = 3) -> str:
    listed = "; ".join(f"{rel} ({why})" for rel, why in failures[:shown])
    return listed + (f"; and {len(failures) - shown} more" if len(failures) > shown else "")


class Mirror:
    """The local mirror of one bucket prefix; safe to use from several threads and processes at once."""

    def __init__(self, uri: str, settings: ObjectStoreConfig | None = None) -> None:
        self.uri = uri
        self.bucket, self.prefix = _split(uri)
        self.root = cache_folder(uri)
        self.root.mkdir(parents=True, exist_ok=True)
        self.configure(settings or ObjectStoreConfig())
        self._thread_lock = threading.RLock()
        self._in_flight: dict[str, Future] = {}
        self._index: dict[str, Entry] | None = None
        """The committed store as this process last read or wrote it."""

    def configure(self, settings: ObjectStoreConfig) -> None:
        """Use these retry, timeout and parallelism settings from now on."""
        if getattr(self, "settings", None) == settings:
            return
        if getattr(self, "_pool", None) is not None:
            self._pool.shutdown(wait=False)  # what it started finishes; new transfers go to the new pool
        self.settings = settings
        self.requests = Requests(self.uri, settings)
        self._client = client(settings)
        self._pool = ThreadPoolExecutor(settings.threads, thread_name_prefix="circuitdb-s3")

    # ---- records of what was synchronized: rel → [sha256, local size, local mtime_ns] ----
    @contextmanager
    def _records(self) -> Iterator[dict[str, list]]:
        """The synchronization records, locked against other threads and processes, saved on exit."""
        with self._thread_lock, open(self.root / _LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            path = self.root / _STATE
            records = json.loads(path.read_text()) if path.is_file() else {}
            yield records
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(records))
            os.replace(tmp, path)

    def _key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def _local_stat(self, rel: str) -> list[int] | None:
        try:
            st = (self.root / rel).stat()
        except FileNotFoundError:
            return None
        return [st.st_size, st.st_mtime_ns]

    # ---- the committed index ----
    def read_index(self) -> tuple[dict[str, Entry], str | None]:
        """The committed store and the ETag of its index (None: nothing committed yet)."""
        try:
            response, body = self.requests.call("reading the index", self._get_index)
        except RequestFailed as failed:
            if error_code(failed.cause) not in ("404", "NoSuchKey"):
                raise
            self._refuse_old_layout()
            return {}, None
        try:
            files = json.loads(body)["files"]
            index = {rel: Entry(sha, size) for rel, (sha, size) in files.items()}
        except (ValueError, KeyError, TypeError):
            raise CircuitDBError(f"object store {self.uri}: {INDEX} is damaged (not a circuitdb index)") from None
        return index, response["ETag"]

    def _get_index(self) -> tuple[dict, bytes]:
        response = self._client.get_object(Bucket=self.bucket, Key=self._key(INDEX))
        return response, response["Body"].read()

    def _refuse_old_layout(self) -> None:
        """A prefix with objects but no index was written one object per path (before commits existed)."""
        base = f"{self.prefix}/" if self.prefix else ""
        listed = self.requests.call(
            "listing the bucket", partial(self._client.list_objects_v2, Bucket=self.bucket, Prefix=base, MaxKeys=10)
        )
        names = [item["Key"][len(base) :] for item in listed.get("Contents", [])]
        if any(not name.startswith(OBJECTS) and name != INDEX for name in names):  # the index: just committed
            raise CircuitDBError(
                f"object store {self.uri} holds a store in the old layout (one object per file, no {INDEX}): "
                "pull it into a folder with an older circuitdb and publish it again"
            )

    def _current_index(self) -> dict[str, Entry]:
        if self._index is None:
            self._index, _ = self.read_index()
        return self._index

    # ---- downloads ----
    def _download(self, rel: str, entry: Entry) -> list[int]:
        """Download one file into place atomically, checked against its hash; returns its record."""
        target = self.root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        os.close(fd)
        try:
            self.requests.call(f"downloading {rel}", partial(self._get_object, entry.sha256, Path(tmp)))
            os.replace(tmp, target)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return [entry.sha256, *self._local_stat(rel)]

    def _get_object(self, sha256: str, into: Path) -> None:
        response = self._client.get_object(Bucket=self.bucket, Key=self._key(OBJECTS + sha256))
        digest = hashlib.sha256()
        try:
            with open(into, "wb") as handle:
                for chunk in response["Body"].iter_chunks(CHUNK):
                    digest.update(chunk)
                    handle.write(chunk)
        except OSError as failure:
            if is_out_of_space(failure):
                raise out_of_space(into.parent, response.get("ContentLength")) from None
            raise
        if digest.hexdigest() != sha256:
            raise DamagedTransfer(f"object {sha256[:12]} arrived damaged")

    def pull(self, under: str = "", large: bool = False) -> int:
        """Bring the mirror in step with the committed store under `under` (every file when `large`, else the
        small ones; stale large ones are removed, to be fetched when read). Returns files downloaded."""
        index, _ = self.read_index()
        self._index = index
        with self._records() as records:
            wanted = []
            for rel, entry in index.items():
                if not rel.startswith(under):
                    continue
                record = records.get(rel)
                if record and record[0] == entry.sha256 and (self._local_stat(rel) is not None or _large(rel)):
                    continue  # unchanged remotely (a local edit is pushed later; a large file is fetched when read)
                if _large(rel) and not large:
                    (self.root / rel).unlink(missing_ok=True)
                    records.pop(rel, None)
                    continue
                wanted.append(rel)
            for rel, record in list(records.items()):
                if rel.startswith(under) and rel not in index and self._local_stat(rel) == record[1:]:
                    (self.root / rel).unlink(missing_ok=True)  # deleted in the bucket, unchanged here
                    del records[rel]
            downloads = {rel: self._pool.submit(self._download, rel, index[rel]) for rel in wanted}
            wait(downloads.values())  # all of them, so a failure leaves no download under way
            failures = [download.exception() for download in downloads.values() if download.exception()]
            for rel, download in downloads.items():
                if not download.exception():
                    records[rel] = download.result()
            if failures:
                raise failures[0]
        return len(wanted)

    def fetch(self, path: Path) -> bool:
        """Download `path` (inside the mirror) when it is absent here; False when the store lacks it too."""
        rel = path.relative_to(self.root).as_posix()
        if path.exists() or not _synchronized(rel):
            return path.exists()
        self._start(rel).result()
        return path.exists()

    def prefetch(self, paths: Iterable[Path]) -> None:
        """Start downloading `paths` that are absent here, in the background (`fetch` waits for each)."""
        for path in paths:
            rel = path.relative_to(self.root).as_posix()
            if not path.exists():
                self._start(rel)

    def _start(self, rel: str) -> Future:
        with self._thread_lock:
            if rel not in self._in_flight:
                self._in_flight[rel] = self._pool.submit(self._fetch_one, rel)
            return self._in_flight[rel]

    def _fetch_one(self, rel: str) -> None:
        try:
            entry = self._current_index().get(rel)
            if entry is None:
                return  # not in the store: the reader reports the missing file as it would locally
            record = self._download(rel, entry)
        finally:
            with self._thread_lock:
                self._in_flight.pop(rel, None)
        with self._records() as records:
            records[rel] = record

    # ---- publishing ----
    def push(self) -> int:
        """Upload every local file changed since it was synchronized, then commit them (and the files removed
        here) in one step; returns the number of files changed. Raises naming the files not uploaded, and
        then commits nothing."""
        with self._records() as records:
            changed, removed = self._local_changes(records)
            if not changed and not removed:
                return 0
            known = {entry.sha256 for entry in self.read_index()[0].values()}
            self._upload_all({rel: change for rel, change in changed.items() if change.entry.sha256 not in known})
            self._index = self._commit({rel: change.entry for rel, change in changed.items()}, removed)
            for rel, change in changed.items():
                records[rel] = [change.entry.sha256, *change.stat]
            for rel in removed:
                del records[rel]
        self._collect_garbage(self._index)
        return len(changed)

    def _local_changes(self, records: dict[str, list]) -> tuple[dict[str, LocalChange], list[str]]:
        """Files written here since they were synchronized (hashed), and synchronized files removed here."""
        changed: dict[str, LocalChange] = {}
        for path in self.root.rglob("*"):
            rel = path.relative_to(self.root).as_posix()
            if not (path.is_file() and _synchronized(rel)):
                continue
            record, stat = records.get(rel), self._local_stat(rel)
            if stat is None or (record is not None and record[1:] == stat):
                continue
            sha256 = digest_file(path)
            if record is not None and record[0] == sha256:
                record[1:] = stat  # touched, same bytes
                continue
            changed[rel] = LocalChange(Entry(sha256, stat[0]), stat)
        removed = [rel for rel in records if _synchronized(rel) and not (self.root / rel).exists()]
        return changed, removed

    def _upload_all(self, uploads: dict[str, LocalChange]) -> None:
        """Upload each file as the object named by its hash; the first file that cannot be uploaded stops the
        rest, and the error names every file left out."""
        gave_up = threading.Event()
        futures = {rel: self._pool.submit(self._upload, rel, change, gave_up) for rel, change in uploads.items()}
        failures = []
        for rel, future in futures.items():
            try:
                future.result()
            except RequestFailed as failed:
                failures.append((rel, str(failed).rsplit(": ", 1)[-1]))
        if failures:
            raise CircuitDBError(
                f"object store {self.uri}: {len(failures)} of {len(uploads)} changed files were not uploaded, so "
                f"nothing was published (the store there is as it was; run the command again to publish): "
                f"{_few(failures)}"
            )

    def _upload(self, rel: str, change: LocalChange, gave_up: threading.Event) -> None:
        if gave_up.is_set():
            raise RequestFailed("not attempted", CircuitDBError("not attempted after another upload failed"))
        key = self._key(OBJECTS + change.entry.sha256)
        upload = partial(self._client.upload_file, str(self.root / rel), self.bucket, key)
        try:
            self.requests.call(f"uploading {rel}", upload)
        except RequestFailed:
            gave_up.set()
            raise
        if self._local_stat(rel) != change.stat:
            gave_up.set()  # rewritten while it was sent: the object may not hold the hashed bytes
            raise RequestFailed("changed while it was uploaded", CircuitDBError(rel))

    def _commit(self, changed: dict[str, Entry], removed: list[str]) -> dict[str, Entry]:
        """Lay these changes over the committed index and replace it only if no other writer committed in
        between (If-Match on its ETag); else read theirs and lay ours over it again."""
        for _ in range(_COMMIT_TRIES):
            index, etag = self.read_index()
            index.update(changed)
            for rel in removed:
                index.pop(rel, None)
            body = json.dumps({"files": {rel: list(entry) for rel, entry in sorted(index.items())}}).encode()
            condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
            try:
                self.requests.call(
                    "committing the index",
                    partial(self._client.put_object, Bucket=self.bucket, Key=self._key(INDEX), Body=body, **condition),
                )
                return index
            except RequestFailed as failed:
                if error_code(failed.cause) not in ("PreconditionFailed", "412"):
                    raise CircuitDBError(f"{failed}; nothing was published (run the command again)") from None
        raise CircuitDBError(f"object store {self.uri}: {_COMMIT_TRIES} other commits won the race; nothing published")

    def _collect_garbage(self, index: dict[str, Entry]) -> None:
        """Delete objects no index names once they are old enough not to belong to a push under way.
        Best effort: garbage left now only costs space, and the next push tries again."""
        named = {entry.sha256 for entry in index.values()}
        base = self._key(OBJECTS)
        cutoff = datetime.now(UTC) - _GARBAGE_AGE
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base)
            old = [
                {"Key": item["Key"]}
                for page in pages
                for item in page.get("Contents", [])
                if item["Key"][len(base) :] not in named and item["LastModified"] < cutoff
            ]
            for start in range(0, len(old), 1000):
                self._client.delete_objects(Bucket=self.bucket, Delete={"Objects": old[start : start + 1000]})
        except Exception:  # noqa: BLE001 (a flaky store: the next push collects it)
            return


_mirrors: dict[Path, Mirror] = {}
"""Open mirrors by local root: the integrity check fetches a file that is read before it is here."""


def open_mirror(uri: str, settings: ObjectStoreConfig | None = None) -> Mirror:
    root = cache_folder(uri)
    if root not in _mirrors:
        _mirrors[root] = Mirror(uri, settings)
    elif settings is not None:
        _mirrors[root].configure(settings)
    return _mirrors[root]


def mirror_at(root: Path) -> Mirror | None:
    return _mirrors.get(Path(root))


def prefetch(root: Path, paths: Iterable[Path]) -> None:
    """For a store on object storage rooted at `root`: start downloading `paths` in the background."""
    mirror = mirror_at(root)
    if mirror is not None:
        mirror.prefetch(paths)

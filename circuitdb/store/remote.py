"""A store on object storage (`store: s3://bucket/prefix`): a local mirror kept in step with the bucket.

Why a mirror and not every reader speaking S3: DuckDB's S3 support is an extension that cannot be
downloaded here, safetensors memory-maps files, the query sandbox is defined by folders, and every
write in the store is already a whole file replaced atomically. So the store works on a local folder
(`$CIRCUITDB_CACHE/<bucket>/<prefix>`, default `~/.cache/circuitdb`) and this module moves whole files:

- `pull()` at the start of a step or a query: one listing of the bucket; small files (tables, manifests,
  checksums, configs, finished markers) are downloaded when their ETag changed; large ones (activation
  shards, dictionary weights, graph JSON) are only dropped when stale, and fetched when first read
  (`fetch`, called by the integrity check that guards every read) or ahead of time (`prefetch`).
- `push()` at the end of a step: every local file that changed since it was last synchronized is
  uploaded as one object (a PUT, or a multipart upload, becomes visible only when complete, so a kill
  leaves the old object or none), data first, then checksums and manifests, then finished markers, so a
  reader never sees a marker before what it vouches for. Files removed locally are deleted remotely.

Credentials and endpoint come from the usual environment (`AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT_URL`, ...).
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

from circuitdb.errors import CircuitDBError

CACHE_ENV = "CIRCUITDB_CACHE"
_STATE, _LOCK = ".sync.json", ".sync.lock"
_LOCAL_ONLY = {".verified", ".dagster", _STATE, _LOCK}
"""Per-machine files: the verification cache, a local Dagster home and this module's own records."""
_THREADS = 8


class RemoteObject(NamedTuple):
    size: int
    etag: str


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


def _wave(rel: str) -> int:
    """Upload order: data, then what describes it (checksums, manifests, LanceDB versions), then markers."""
    name = rel.rsplit("/", 1)[-1]
    if rel.startswith(".finished/"):
        return 2
    if name.startswith(".") or name == "manifest.json" or "/_versions/" in rel or name.endswith(".manifest"):
        return 1
    return 0


def _client():
    import boto3
    from botocore.config import Config

    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return boto3.client("s3", region_name=region, config=Config(max_pool_connections=2 * _THREADS))


def _remote_error(uri: str, exc: Exception) -> CircuitDBError:
    return CircuitDBError(f"object store {uri}: {exc}")


class Mirror:
    """The local mirror of one bucket prefix; safe to use from several threads and processes at once."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.bucket, self.prefix = _split(uri)
        self.root = cache_folder(uri)
        self.root.mkdir(parents=True, exist_ok=True)
        self._client = _client()
        self._thread_lock = threading.RLock()
        self._in_flight: dict[str, Future] = {}
        self._pool = ThreadPoolExecutor(_THREADS, thread_name_prefix="circuitdb-s3")

    # ---- records of what was synchronized: rel → [etag, local size, local mtime_ns] ----
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

    def _local_stat(self, rel: str) -> list | None:
        try:
            st = (self.root / rel).stat()
        except FileNotFoundError:
            return None
        return [st.st_size, st.st_mtime_ns]

    def listing(self) -> dict[str, RemoteObject]:
        """Every object under the prefix, by store-relative path."""
        base = f"{self.prefix}/" if self.prefix else ""
        found: dict[str, RemoteObject] = {}
        try:
            for page in self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base):
                for item in page.get("Contents", []):
                    rel = item["Key"][len(base) :]
                    if rel and _synchronized(rel):
                        found[rel] = RemoteObject(item["Size"], item["ETag"].strip('"'))
        except Exception as exc:  # botocore's errors: credentials, endpoint, bucket
            raise _remote_error(self.uri, exc) from None
        return found

    def _download(self, rel: str) -> list | None:
        """Download one object into place atomically; returns its record, or None when the bucket lacks it."""
        target = self.root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        os.close(fd)
        try:
            head = self._client.head_object(Bucket=self.bucket, Key=self._key(rel))
            self._client.download_file(self.bucket, self._key(rel), tmp)
            os.replace(tmp, target)
        except Exception as exc:
            Path(tmp).unlink(missing_ok=True)
            if getattr(exc, "response", {}).get("Error", {}).get("Code") in ("404", "NoSuchKey"):
                return None
            raise _remote_error(self.uri, exc) from None
        return [head["ETag"].strip('"'), *self._local_stat(rel)]

    def pull(self, under: str = "", large: bool = False) -> int:
        """Bring the mirror in step with the bucket under `under` (every file when `large`, else the
        small ones; stale large ones are removed, to be fetched when read). Returns files downloaded."""
        remote = {rel: obj for rel, obj in self.listing().items() if rel.startswith(under)}
        with self._records() as records:
            wanted = []
            for rel, obj in remote.items():
                record = records.get(rel)
                local = self._local_stat(rel)
                if record and record[0] == obj.etag and (local is not None or _large(rel)):
                    continue  # unchanged remotely (a local edit is pushed later; a large file is fetched when read)
                if _large(rel) and not large:
                    (self.root / rel).unlink(missing_ok=True)
                    records.pop(rel, None)
                    continue
                wanted.append(rel)
            for rel, record in list(records.items()):
                if rel.startswith(under) and rel not in remote and self._local_stat(rel) == record[1:]:
                    (self.root / rel).unlink(missing_ok=True)  # deleted in the bucket, unchanged here
                    del records[rel]
            for rel, record in zip(wanted, self._pool.map(self._download, wanted), strict=True):
                if record is not None:  # None: deleted between the listing and the download
                    records[rel] = record
        return len(wanted)

    def fetch(self, path: Path) -> bool:
        """Download `path` (inside the mirror) when it is absent here; False when the bucket lacks it too."""
        rel = path.relative_to(self.root).as_posix()
        if path.exists() or not _synchronized(rel):
            return path.exists()
        future = self._start(rel)
        future.result()
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
            record = self._download(rel)
        finally:
            with self._thread_lock:
                self._in_flight.pop(rel, None)
        if record is None:
            return  # not in the bucket: the reader reports the missing file as it would locally
        with self._records() as records:
            records[rel] = record

    def _upload(self, rel: str) -> None:
        try:
            self._client.upload_file(str(self.root / rel), self.bucket, self._key(rel))
        except Exception as exc:
            raise _remote_error(self.uri, exc) from None

    def push(self) -> int:
        """Upload every local file changed since it was synchronized and delete objects whose files were
        removed here; returns the number of files uploaded."""
        with self._records() as records:
            changed: list[str] = []
            for path in self.root.rglob("*"):
                rel = path.relative_to(self.root).as_posix()
                if path.is_file() and _synchronized(rel):
                    record = records.get(rel)
                    if record is None or record[1:] != self._local_stat(rel):
                        changed.append(rel)
            for wave in (0, 1, 2):
                batch = [rel for rel in changed if _wave(rel) == wave]
                list(self._pool.map(self._upload, batch))
            gone = [rel for rel in records if not (self.root / rel).exists() and _synchronized(rel)]
            for rel in gone:
                try:
                    self._client.delete_object(Bucket=self.bucket, Key=self._key(rel))
                except Exception as exc:
                    raise _remote_error(self.uri, exc) from None
                del records[rel]
            if changed:
                remote = self.listing()
                for rel in changed:
                    if rel in remote:
                        records[rel] = [remote[rel].etag, *self._local_stat(rel)]
        return len(changed)


_mirrors: dict[Path, Mirror] = {}
"""Open mirrors by local root: the integrity check fetches a file that is read before it is here."""


def open_mirror(uri: str) -> Mirror:
    root = cache_folder(uri)
    if root not in _mirrors:
        _mirrors[root] = Mirror(uri)
    return _mirrors[root]


def mirror_at(root: Path) -> Mirror | None:
    return _mirrors.get(Path(root))


def prefetch(root: Path, paths: Iterable[Path]) -> None:
    """For a store on object storage rooted at `root`: start downloading `paths` in the background."""
    mirror = mirror_at(root)
    if mirror is not None:
        mirror.prefetch(paths)

"""Answers of the JSON API kept until the store changes.

The store changes only by whole files replaced in its folders, so the modification times of the table and
vector folders say whether anything a page shows may have changed (a rename into a folder updates its time).
Many readers ask for the same graphs and features; a kept answer costs a few stat calls instead of the
DuckDB and Parquet reads behind it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

from circuitdb.store import Store

MAX_BYTES = 64 << 20
"""Answers kept at most (the least recently used go first)."""


def store_state(store: Store) -> tuple:
    """What changes whenever any table, vector or graph file of the store is written or removed."""
    folders = [store.tables_dir, *store.tables_dir.glob("*"), store.root / "graphs"]
    folders += (store.root / "vectors").glob("*/*")
    state = []
    for folder in folders:
        try:
            state.append((folder.name, folder.stat().st_mtime_ns))
        except FileNotFoundError:
            state.append((folder.name, None))
    return tuple(state)


class ResponseCache:
    """Bodies by request (path and query), each with the store state it was computed in."""

    def __init__(self, store: Store, max_bytes: int = MAX_BYTES) -> None:
        self.store = store
        self.max_bytes = max_bytes
        self._kept: OrderedDict[str, tuple[tuple, bytes]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def answer(self, key: str, compute: Callable[[], bytes]) -> bytes:
        """The kept body for `key` if the store has not changed since, else `compute()` (kept for next time)."""
        state = store_state(self.store)
        with self._lock:
            kept = self._kept.get(key)
            if kept is not None and kept[0] == state:
                self._kept.move_to_end(key)
                return kept[1]
        body = compute()
        with self._lock:
            if key in self._kept:
                self._bytes -= len(self._kept.pop(key)[1])
            self._kept[key] = (state, body)
            self._bytes += len(body)
            while self._bytes > self.max_bytes and self._kept:
                self._bytes -= len(self._kept.popitem(last=False)[1][1])
        return body

"""The store's dictionaries, looked up one way: by the `dictionaries` table, their files verified against
their checksums before they are loaded. Training, statistics, search, attribution and export all read
stored dictionaries through here."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from circuitdb.dictionaries.cross_layer_transcoder import CrossLayerTranscoder
from circuitdb.dictionaries.formats import (
    DictionarySet,
    load_dictionary,
    write_dictionaries,
)
from circuitdb.dictionaries.sparse_coder import SparseCoder
from circuitdb.errors import CircuitDBError
from circuitdb.models import HookPoint
from circuitdb.store import Store, read_table
from circuitdb.store.integrity import verify


def _rows(store: Store, name: str) -> pl.DataFrame:
    rows = read_table(store, "dictionaries").filter(pl.col("name") == name).sort("layer")
    if rows.is_empty():
        raise CircuitDBError(f"no dictionaries named {name!r} in the store; build or import them first")
    return rows


def load_stored(store: Store, folder: str) -> tuple[SparseCoder | CrossLayerTranscoder, dict]:
    """A stored dictionary's folder loaded, once its files match their checksums."""
    for file in ("config.json", "weights.safetensors"):
        verify(store.root, store.root / folder / file)
    return load_dictionary(store.root / folder)


def stored_dictionary(store: Store, name: str, layer: int) -> tuple[SparseCoder, dict]:
    """The per-layer dictionary of set `name` at `layer`, with its config.json."""
    rows = _rows(store, name).filter(pl.col("layer") == layer)
    if rows.is_empty():
        raise CircuitDBError(f"dictionary {name!r} for layer {layer} is not built yet")
    return load_stored(store, rows["path"][0])


def stored_set(store: Store, name: str) -> DictionarySet:
    """The store's dictionary set `name` (trained here or imported), as the `dictionaries` table lists it."""
    rows = _rows(store, name)
    first = rows.row(0, named=True)
    input_kind, output_kind = HookPoint.parse(first["input_hook"]).kind, HookPoint.parse(first["target_hook"]).kind
    if first["kind"] == "clt":
        clt, _ = load_stored(store, first["path"])
        source = {0: str(store.root / first["path"])}
        return DictionarySet(name, "circuitdb", clt=clt, sources=source, model=first["model"])
    coders, sources = {}, {}
    for row in rows.iter_rows(named=True):
        if (row["input_hook"], row["target_hook"]) != (f"{input_kind}.{row['layer']}", f"{output_kind}.{row['layer']}"):
            raise CircuitDBError(
                f"dictionary {name}/{row['layer']} maps {row['input_hook']} → {row['target_hook']}, "
                f"unlike the set's {first['input_hook']} → {first['target_hook']}"
            )
        coders[row["layer"]], _ = load_stored(store, row["path"])
        sources[row["layer"]] = str(store.root / row["path"])
    return DictionarySet(name, "circuitdb", coders, None, input_kind, output_kind, sources, first["model"])


def export_set(store: Store, name: str, layer: int | None, fmt: str, out: Path, overwrite: bool) -> int:
    """Write the stored set `name` (or only its `layer`) into `out` in format `fmt`; returns how many
    dictionaries were written."""
    dictionaries = stored_set(store, name)
    if layer is not None:
        if layer not in dictionaries.coders:
            raise CircuitDBError(
                f"dictionary set {name!r} has no layer {layer} of its own (layers {dictionaries.layers})"
            )
        dictionaries.coders = {layer: dictionaries.coders[layer]}
    write_dictionaries(dictionaries, fmt, out, overwrite)
    return 1 if dictionaries.clt is not None else len(dictionaries.coders)

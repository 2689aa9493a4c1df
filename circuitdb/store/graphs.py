"""Where an attribution graph lives in the store: its slug, its `graphs` row and its JSON file.

Apart from the attribution code, so that reading a built graph (`circuitdb graph show|edges|export`)
needs neither torch nor the model.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from circuitdb.errors import CircuitDBError
from circuitdb.store.layout import Store
from circuitdb.store.parquet import read_table, write_partition


def graph_slug(prompt: str, model: str, dictionaries: str, target: str = "") -> str:
    """Readable and stable: the prompt's first words + a hash of (prompt, model, transcoders, target); the
    top logits' target ('') leaves the hash as it was before targets existed."""
    words = "-".join(re.findall(r"[a-z0-9]+", prompt.lower())[:6])[:40] or "prompt"
    key = f"{prompt}\0{model}\0{dictionaries}" + (f"\0{target}" if target else "")
    digest = hashlib.sha256(key.encode()).hexdigest()[:8]
    return f"{words}-{digest}"


def graph_json_path(store: Store, slug: str) -> Path:
    return store.root / "graphs" / f"{slug}.json"


def graph_row(store: Store, slug: str) -> dict:
    """The graph's `graphs` row (its own partition, named by the slug)."""
    rows = read_table(store, "graphs", partitions=[slug]).filter(pl.col("slug") == slug)
    if rows.is_empty():
        raise CircuitDBError(f"unknown graph {slug!r}; `circuitdb graph list` shows the built ones")
    return rows.row(0, named=True)


def stale_graphs(store: Store) -> dict[str, str]:
    """slug → prompt of the graphs built before the latest training of the transcoders they use."""
    graphs = read_table(store, "graphs")
    trained = read_table(store, "dictionaries").group_by("name").agg(pl.col("created_at").max().alias("trained"))
    joined = graphs.join(trained, left_on="dictionaries", right_on="name", how="inner")
    stale = joined.filter(pl.col("created_at") < pl.col("trained"))
    return dict(zip(stale["slug"], stale["prompt"], strict=True))


def write_annotation(
    store: Store, slug: str, kind: str, name: str, node_ids: list[str], deleted: bool, extra: dict | None = None
) -> None:
    """One `graph_annotations` partition per (graph, kind, name), written whole (supernodes keep the partition
    names they always had); `extra` fills the columns automatic supernodes carry (source, parameters, effects)."""
    key = name if kind == "supernode" else f"{kind}\0{name}"
    row = {"slug": slug, "name": name, "node_ids": node_ids, "created_at": datetime.now(UTC)}
    row |= {"kind": kind, "deleted": deleted} | (extra or {})
    partition = f"{slug}.{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    write_partition(store, "graph_annotations", partition, pl.DataFrame([row]))


def retire_automatic(store: Store, slugs: list[str], prompt_set: str | None) -> None:
    """Mark deleted the automatic supernodes an earlier run of the same origin (one graph's grouping, or one
    prompt set's) saved on `slugs`: a new run supersedes them whatever their names; hand-made ones and those
    of other origins stay."""
    saved = read_table(store, "graph_annotations").filter(pl.col("slug").is_in(slugs))
    latest = saved.sort("created_at").unique(["slug", "kind", "name"], keep="last")
    automatic = latest.filter((pl.col("source") == "auto") & ~pl.col("deleted").fill_null(False))
    for slug, name, parameters in automatic.select("slug", "name", "parameters").iter_rows():
        if json.loads(parameters or "{}").get("prompt_set") == prompt_set:
            write_annotation(store, slug, "supernode", name, [], True)

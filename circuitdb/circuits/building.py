"""Building a prompt set: its graphs (all, or some prompts: Dagster's partitions) back to back with the model and
transcoders loaded once, each slug recorded in the set as its graph finishes (so a build that stops resumes where
it was), then the set aggregated."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import polars as pl

from circuitdb.attribution.pipeline import NamedTranscoders, build_graph
from circuitdb.attribution.targets import TOP_LOGITS_TARGET, TargetSpec
from circuitdb.circuits.aggregate import aggregate_set
from circuitdb.circuits.prompt_sets import set_rows
from circuitdb.config import AttributionConfig
from circuitdb.models import LoadedModel
from circuitdb.store import Store, write_partition


class BuiltPrompt(NamedTuple):
    position: int
    row: dict
    """The graph's `graphs` row."""


def to_build(rows: pl.DataFrame, stale: set[str] = frozenset(), positions: set[int] | None = None) -> pl.DataFrame:
    """The set's prompts (`set_rows`, or those at `positions`) whose graph is not built, or is in `stale` (built
    before its transcoders' retraining)."""
    if positions is not None:
        rows = rows.filter(pl.col("position").is_in(sorted(positions)))
    return rows.filter(pl.col("slug").is_null() | pl.col("slug").is_in(list(stale)))


def build_set_graphs(
    store: Store,
    lm: LoadedModel,
    named: NamedTranscoders,
    cfg: AttributionConfig,
    name: str,
    progress: Callable[[BuiltPrompt], None] | None = None,
    stale: set[str] = frozenset(),
    positions: set[int] | None = None,
) -> list[BuiltPrompt]:
    """Build the graphs of the set's prompts `to_build` names (rows only: `graph export` writes a JSON), recording
    each slug in the set as it finishes; returns what was built."""
    rows = set_rows(store, name)
    built = []
    for position, prompt, target in to_build(rows, stale, positions).select("position", "prompt", "target").iter_rows():
        spec = TargetSpec((target,)) if target else TOP_LOGITS_TARGET
        graph, _ = build_graph(store, lm, prompt, named, cfg, target=spec, keep_json=False)
        done = pl.col("position") == position
        rows = rows.with_columns(slug=pl.when(done).then(pl.lit(graph["slug"])).otherwise(pl.col("slug")))
        write_partition(store, "prompt_sets", name, rows)
        built.append(BuiltPrompt(position, graph))
        if progress is not None:
            progress(built[-1])
    return built


def build_prompt_set(
    store: Store,
    lm: LoadedModel,
    named: NamedTranscoders,
    cfg: AttributionConfig,
    name: str,
    progress: Callable[[BuiltPrompt], None] | None = None,
    stale: set[str] = frozenset(),
) -> dict:
    """Build the set's graphs not built yet (`build_set_graphs`), then aggregate the set; returns its
    `circuit_sets` row."""
    build_set_graphs(store, lm, named, cfg, name, progress, stale)
    return aggregate_set(store, name)

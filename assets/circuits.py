"""Circuits over prompt sets: `set_graphs` has one partition per (set, prompt), and a backfill of a set's
partitions is one run (model and transcoders loaded once, graphs back to back); `prompt_set_circuits` has one
partition per set and aggregates its graphs into `circuit_features`, `circuit_edges` and `circuit_sets`. The
sensors add the partitions of a new set file, request its graphs, and aggregate a set once its graphs are all
built; a schedule rebuilds the graphs that went stale (all in `orchestration/`)."""

from pathlib import Path

import dagster as dg
import polars as pl

from assets.partitions import (
    RANGE_END,
    RANGE_START,
    gpu_step,
    prompt_set_partitions,
    set_prompt_key,
    set_prompt_partitions,
    split_set_prompt_key,
)
from assets.resources import ProjectParam, publishes
from circuitdb.attribution.pipeline import NamedTranscoders
from circuitdb.circuits.aggregate import aggregate_set
from circuitdb.circuits.building import BuiltPrompt, build_set_graphs
from circuitdb.circuits.prompt_sets import define_set, read_prompt_file, set_rows
from circuitdb.config import ProjectConfig
from circuitdb.errors import CircuitDBError
from circuitdb.store import Store, read_table
from circuitdb.store.graphs import stale_graphs


def configured_sets(config: ProjectConfig) -> dict[str, Path]:
    """name → file of each prompt set of the configuration."""
    return {Path(file).stem: Path(file) for file in config.attribution.prompt_set_files}


def stale_sets(store: Store) -> dict[str, set[str]]:
    """name → slugs of each prompt set holding graphs built before their transcoders' latest training."""
    if "prompt_sets" not in store.table_names():
        return {}
    stale = set(stale_graphs(store))
    rows = read_table(store, "prompt_sets", ["prompt_set", "slug"]).filter(pl.col("slug").is_in(list(stale)))
    return {name: set(group["slug"]) for (name,), group in rows.group_by("prompt_set")}


def set_graphs_request(name: str, count: int, run_key: str | None = None) -> dg.RunRequest:
    """One run of the set's `set_graphs` partitions (its prompts in order): a single-run backfill of the range."""
    tags = {RANGE_START: set_prompt_key(name, 0), RANGE_END: set_prompt_key(name, count - 1)}
    return dg.RunRequest(run_key=run_key, tags=tags)


def set_partitions(keys: list[str]) -> dict[str, set[int]]:
    """name → positions of the `set_prompts` partition keys a run was given."""
    grouped: dict[str, set[int]] = {}
    for key in keys:
        name, position = split_set_prompt_key(key)
        grouped.setdefault(name, set()).add(position)
    return grouped


def sets_to_aggregate(store: Store) -> dict[str, str]:
    """name → newest graph's time, of each prompt set whose graphs are all built and whose aggregate is missing or
    older than one of them."""
    if "prompt_sets" not in store.table_names():
        return {}
    rows = read_table(store, "prompt_sets", ["prompt_set", "slug"])
    complete = rows.group_by("prompt_set").agg(pl.col("slug").null_count().alias("missing"), pl.col("slug"))
    complete = complete.filter(pl.col("missing") == 0).explode("slug")
    if complete.is_empty():
        return {}
    built = read_table(store, "graphs", ["slug", "created_at"], partitions=complete["slug"].unique().to_list())
    newest = complete.join(built, on="slug").group_by("prompt_set").agg(pl.col("created_at").max().alias("newest"))
    if "circuit_sets" in store.table_names():
        aggregated = read_table(store, "circuit_sets", ["prompt_set", "created_at"])
        newest = newest.join(aggregated, on="prompt_set", how="left").filter(
            pl.col("created_at").is_null() | (pl.col("created_at") < pl.col("newest"))
        )
    return {name: str(time) for name, time in newest.select("prompt_set", "newest").iter_rows()}


@dg.asset(
    partitions_def=set_prompt_partitions,
    deps=[dg.AssetDep(name, partition_mapping=dg.AllPartitionMapping()) for name in ("dictionaries", "feature_stats")],
    group_name="circuits",
    kinds={"pytorch", "parquet"},
    backfill_policy=dg.BackfillPolicy.single_run(),
    **gpu_step(),
)
@publishes
def set_graphs(context: dg.AssetExecutionContext, project: ProjectParam) -> dg.MaterializeResult:
    """The attribution graph of each prompt of a prompt set (rows only: `graph export` writes its JSON), the
    run's prompts back to back; a prompt whose graph is built and newer than its transcoders is kept."""
    store, cfg = project.store, project.config.attribution
    files = configured_sets(project.config)
    named = NamedTranscoders(project.transcoders(cfg.dictionaries), cfg.dictionaries)
    stale = stale_sets(store)
    built: list[BuiltPrompt] = []
    for name, positions in set_partitions(context.partition_keys).items():
        if name in files:
            define_set(store, name, read_prompt_file(files[name]))
        if set_rows(store, name).is_empty():
            raise CircuitDBError(f"no prompt set {name!r}: give its file in attribution.prompt_set_files")

        def logged(done: BuiltPrompt, name: str = name) -> None:
            row = done.row
            context.log.info(
                f"{name} prompt {done.position}: {row['slug']} replacement {row['replacement_score']:.3f} "
                f"completeness {row['completeness_score']:.3f}"
            )

        built += build_set_graphs(store, project.model, named, cfg, name, logged, stale.get(name, set()), positions)
    replacement = [done.row["replacement_score"] for done in built]
    return dg.MaterializeResult(
        metadata={
            "graphs_built": len(built),
            "kept": len(context.partition_keys) - len(built),
            "mean_replacement": sum(replacement) / len(replacement) if replacement else float("nan"),
        }
    )


@dg.asset(
    partitions_def=prompt_set_partitions,
    deps=[dg.AssetDep(set_graphs, partition_mapping=dg.AllPartitionMapping())],
    group_name="circuits",
    kinds={"duckdb", "parquet"},
)
@publishes
def prompt_set_circuits(context: dg.AssetExecutionContext, project: ProjectParam) -> dg.MaterializeResult:
    """A prompt set's aggregated circuit from its built graphs: the features and edges that recur across its
    prompts, and its mean replacement and completeness with 95% intervals."""
    name, store = context.partition_key, project.store
    summary = aggregate_set(store, name)
    top = read_table(store, "circuit_features", ["feature_id", "graphs", "label"], partitions=[name]).head(10)
    return dg.MaterializeResult(
        metadata={
            "prompts": summary["prompts"],
            "graphs": summary["graphs"],
            "replacement": f"{summary['replacement']:.3f} ± {summary['replacement_ci95']:.3f}",
            "completeness": f"{summary['completeness']:.3f} ± {summary['completeness_ci95']:.3f}",
            "recurring_features": dg.MetadataValue.md(
                "\n".join(f"- {f} ({g} graphs): {label}" for f, g, label in top.rows()) or "none"
            ),
            "dagster/row_count": summary["graphs"],
        }
    )

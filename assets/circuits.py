"""Circuits over prompt sets: one partition per set, whose run builds the set's graphs not built yet (or built
before their transcoders were last trained) back to back and aggregates the set into `circuit_features`,
`circuit_edges` and `circuit_sets`. The sensor adds a partition per new set file; a schedule refreshes sets
whose graphs went stale (both in `orchestration/`)."""

from pathlib import Path

import dagster as dg
import polars as pl

from assets.partitions import gpu_step, prompt_set_partitions
from assets.resources import ProjectParam, publishes
from circuitdb.attribution.pipeline import NamedTranscoders
from circuitdb.circuits.building import BuiltPrompt, build_prompt_set
from circuitdb.circuits.prompt_sets import define_set, read_prompt_file
from circuitdb.config import ProjectConfig
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


@dg.asset(
    partitions_def=prompt_set_partitions,
    deps=[dg.AssetDep(name, partition_mapping=dg.AllPartitionMapping()) for name in ("dictionaries", "feature_stats")],
    group_name="circuits",
    kinds={"pytorch", "parquet"},
    **gpu_step(),
)
@publishes
def prompt_set_circuits(context: dg.AssetExecutionContext, project: ProjectParam) -> dg.MaterializeResult:
    """A prompt set's graphs (one per prompt, rows only) and its aggregated circuit: the features and edges
    that recur across its prompts, and its mean replacement and completeness with 95% intervals."""
    name, store, cfg = context.partition_key, project.store, project.config.attribution
    files = configured_sets(project.config)
    if name in files:
        define_set(store, name, read_prompt_file(files[name]))
    named = NamedTranscoders(project.transcoders(cfg.dictionaries), cfg.dictionaries)

    def logged(done: BuiltPrompt) -> None:
        row = done.row
        context.log.info(
            f"{name} prompt {done.position}: {row['slug']} replacement {row['replacement_score']:.3f} "
            f"completeness {row['completeness_score']:.3f}"
        )

    stale = stale_sets(store).get(name, set())
    summary = build_prompt_set(store, project.model, named, cfg, name, logged, stale)
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

"""Circuit stage: one attribution graph per prompt (a dynamic partition each), validated by intervention.

Partition keys are graph slugs (prompt words + a hash of prompt, model and transcoders), so a key
names one graph and the prompt text never has to fit Dagster's key rules. Prompts come from
`attribution.prompts` and, one per line, from `attribution.prompts_file`: a sensor adds a partition
and requests a run for each new line; a schedule re-runs graphs older than their transcoders.
"""

import dagster as dg
import polars as pl

from circuitdb.attribution.pipeline import build_graph
from circuitdb.config import ProjectConfig
from circuitdb.errors import CircuitDBError
from circuitdb.store import Store, read_table
from circuitdb.store.graphs import graph_slug
from orchestration.resources import ProjectResource

prompt_partitions = dg.DynamicPartitionsDefinition(name="prompts")


def configured_prompts(config: ProjectConfig) -> dict[str, str]:
    """slug → prompt for every prompt of the configuration and of its prompts file."""
    prompts = list(config.attribution.prompts)
    if config.attribution.prompts_file:
        try:
            with open(config.attribution.prompts_file, encoding="utf-8") as handle:
                prompts += [line.rstrip("\n").replace("\\n", "\n") for line in handle if line.strip()]
        except OSError as exc:
            raise CircuitDBError(f"cannot read attribution.prompts_file: {exc}") from None
    return {graph_slug(p, config.model.spec, config.attribution.dictionaries): p for p in prompts}


@dg.asset(
    partitions_def=prompt_partitions,
    deps=[dg.AssetDep(name, partition_mapping=dg.AllPartitionMapping()) for name in ("dictionaries", "feature_stats")],
    group_name="circuits",
    kinds={"pytorch", "parquet"},
    pool="gpu",
    check_specs=[dg.AssetCheckSpec("graph_validation", asset="attribution_graphs")],
)
def attribution_graphs(context: dg.AssetExecutionContext, project: ProjectResource) -> dg.MaterializeResult:
    """The pruned attribution graph of one prompt: `graphs`, `graph_nodes`, `graph_edges` and its JSON."""
    from circuitdb.models import load_model

    config = project.load()
    prompts = configured_prompts(config)
    slug = context.partition_key
    if slug not in prompts:
        raise CircuitDBError(f"partition {slug} matches no configured prompt (attribution.prompts / prompts_file)")
    lm = load_model(config.model.spec, config.model.device)
    row, validation = build_graph(Store(config.store), lm, prompts[slug], config.attribution, validate=True)
    worst = max((v["relative_error"] for v in validation), default=0.0)
    return dg.MaterializeResult(
        metadata={
            "prompt": row["prompt"],
            "top_logits": ", ".join(repr(t) for t in row["top_logits"]),
            "n_active_features": row["n_active_features"],
            "n_nodes_pruned": row["n_nodes_pruned"],
            "n_edges_pruned": row["n_edges_pruned"],
            "replacement_score": row["replacement_score"],
            "completeness_score": row["completeness_score"],
            "seconds": row["seconds"],
            "dagster/row_count": row["n_edges_pruned"],
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="graph_validation",
                passed=bool(validation) and worst < 1e-3,
                metadata={"features_checked": len(validation), "max_relative_error": worst},
            )
        ],
    )


@dg.sensor(target=[attribution_graphs], minimum_interval_seconds=30)
def prompts_file_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
    """New prompts (lines of `attribution.prompts_file`, or of `attribution.prompts`) become partitions + runs."""
    config = ProjectResource().load()
    prompts = configured_prompts(config)
    known = set(context.instance.get_dynamic_partitions(prompt_partitions.name))
    new = [slug for slug in prompts if slug not in known]
    if not new:
        return dg.SkipReason("no new prompts")
    return dg.SensorResult(
        run_requests=[dg.RunRequest(partition_key=slug, run_key=slug) for slug in new],
        dynamic_partitions_requests=[prompt_partitions.build_add_request(new)],
    )


def stale_graphs(store: Store) -> list[str]:
    """Slugs of graphs built before the latest training of the transcoders they use."""
    graphs = read_table(store, "graphs")
    trained = read_table(store, "dictionaries").group_by("name").agg(pl.col("created_at").max().alias("trained"))
    joined = graphs.join(trained, left_on="dictionaries", right_on="name", how="inner")
    return joined.filter(pl.col("created_at") < pl.col("trained"))["slug"].to_list()


@dg.schedule(cron_schedule="0 * * * *", target=[attribution_graphs])
def refresh_stale_graphs(context: dg.ScheduleEvaluationContext):
    """Hourly: re-attribute every graph whose transcoders were retrained since it was built."""
    config = ProjectResource().load()
    known = set(context.instance.get_dynamic_partitions(prompt_partitions.name))
    stale = [slug for slug in stale_graphs(Store(config.store)) if slug in known]
    if not stale:
        return dg.SkipReason("every graph is newer than its transcoders")
    return [dg.RunRequest(partition_key=slug) for slug in stale]

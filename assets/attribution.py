"""Circuit stage: one attribution graph per prompt (a dynamic partition each), validated by intervention.

A partition key is a graph's slug (prompt words + a hash of prompt, model and transcoders) for the
configured prompts and the graphs already built, so a key names one graph; a key a user adds in the UI
is the prompt text itself (Dagster allows any text without a newline or "..."). The sensor and the
schedule that add and refresh partitions live in `orchestration/`.
"""

import dagster as dg

from assets.partitions import gpu_step, prompt_partitions
from assets.resources import ProjectParam, publishes
from circuitdb.attribution.pipeline import NamedTranscoders, build_graph
from circuitdb.config import ProjectConfig
from circuitdb.errors import CircuitDBError
from circuitdb.project import Project
from circuitdb.store import Store, read_table
from circuitdb.store.graphs import graph_slug


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


def stored_prompts(store: Store) -> dict[str, str]:
    """slug → prompt of every graph in the store."""
    if "graphs" not in store.table_names():
        return {}
    graphs = read_table(store, "graphs", ["slug", "prompt"])
    return dict(zip(graphs["slug"], graphs["prompt"], strict=True))


def partition_prompt(project: Project, key: str) -> str:
    """The prompt of a partition: a configured prompt's or a built graph's slug, else the key is the prompt."""
    known = configured_prompts(project.config) | stored_prompts(project.store)
    prompt = known.get(key, key)
    if not prompt.strip():
        raise CircuitDBError("the prompt is empty")
    return prompt


def graph_metadata(row: dict, viewer_url: str) -> dict:
    """What the UI shows of a built graph (also for graphs built by the CLI, reported without a run), with a
    link to its page in `circuitdb serve`."""
    return {
        "slug": row["slug"],
        "page": dg.MetadataValue.url(f"{viewer_url.rstrip('/')}/graph/{row['slug']}"),
        "prompt": row["prompt"],
        "top_logits": ", ".join(repr(t) for t in row["top_logits"]),
        "n_active_features": row["n_active_features"],
        "n_nodes_pruned": row["n_nodes_pruned"],
        "n_edges_pruned": row["n_edges_pruned"],
        "replacement_score": row["replacement_score"],
        "completeness_score": row["completeness_score"],
        "seconds": row["seconds"],
        "dagster/row_count": row["n_edges_pruned"],
    }


@dg.asset(
    partitions_def=prompt_partitions,
    deps=[dg.AssetDep(name, partition_mapping=dg.AllPartitionMapping()) for name in ("dictionaries", "feature_stats")],
    group_name="circuits",
    kinds={"pytorch", "parquet", "json"},
    **gpu_step(),
    check_specs=[
        dg.AssetCheckSpec(
            "graph_validation",
            asset="attribution_graphs",
            description="Zeroing each of the top features (frozen attention and MLPs) moves the top logit by "
            "minus its edge: passes below 1e-3 relative error",
        )
    ],
)
@publishes
def attribution_graphs(context: dg.AssetExecutionContext, project: ProjectParam) -> dg.MaterializeResult:
    """The pruned attribution graph of one prompt: rows of the `graphs`, `graph_nodes` and `graph_edges`
    tables (partition = slug) and `<store>/graphs/<slug>.json` in circuit-tracer's schema."""
    config = project.config
    prompt = partition_prompt(project, context.partition_key)
    named = NamedTranscoders(project.transcoders(config.attribution.dictionaries), config.attribution.dictionaries)
    row, validation = build_graph(project.store, project.model, prompt, named, config.attribution, validate=True)
    worst = max((v["relative_error"] for v in validation), default=0.0)
    return dg.MaterializeResult(
        metadata=graph_metadata(row, config.viewer_url),
        check_results=[
            dg.AssetCheckResult(
                check_name="graph_validation",
                passed=bool(validation) and worst < 1e-3,
                metadata={"features_checked": len(validation), "max_relative_error": worst},
            )
        ],
    )

"""Explanation stage: the densest live features of each layer explained in one line by a chat model, and
scored on held-out windows (config `explanations`; off while `top_per_layer` is 0).

One step per layer (assets/layer_steps.py); the explainer is loaded once per process.
"""

import dagster as dg
import polars as pl

from assets.layer_steps import per_layer_graph_asset
from assets.resources import ProjectParam
from circuitdb.explanations.explain import densest_live, explain_and_score
from circuitdb.project import Project
from circuitdb.store import Store, count_rows, read_table


def _explain_layer(project: Project, layer: int, device: str) -> None:
    cfg = project.config.explanations
    if not cfg.top_per_layer or (cfg.layers is not None and layer not in cfg.layers):
        return
    chosen = densest_live(project.store, project.config.dictionaries.name, layer, cfg.top_per_layer)
    scoring = (project.model_on(device), project.corpus) if cfg.score else None
    explain_and_score(project.store, project.explainer(device=device), chosen, scoring)


def _summary_table(store: Store, dictionary: str) -> str:
    """The explanation summary of each scored layer of `dictionary`, as its `dictionaries` row holds it."""
    columns = ["layer", "explained_features", "detection_acc", "fuzzing_acc", "scored_by"]
    rows = read_table(store, "dictionaries", ["name", *columns]).filter(
        (pl.col("name") == dictionary) & pl.col("explained_features").is_not_null()
    )
    lines = ["| layer | scored features | detection | fuzzing | explainer → scorer |", "|---|---|---|---|---|"]
    for layer, count, detection, fuzzing, pair in rows.sort("layer").select(columns).rows():
        shown = ("–" if value is None else f"{value:.3f}" for value in (detection, fuzzing))
        lines.append(f"| {layer} | {count} | {' | '.join(shown)} | {pair} |")
    return "\n".join(lines)


def build_explanations_asset(partitions: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    @dg.op(name="explanations_report", ins={"explained": dg.In(dg.Nothing)}, out=dg.Out(dagster_type=dg.Nothing))
    def report(context: dg.OpExecutionContext, project: ProjectParam) -> None:
        """How many features the run explained, their mean scores, and a sample of explanations."""
        store = project.store
        layers = [int(key) for key in context.partition_keys]
        metadata: dict = {"layers_in_run": len(layers)}
        if "explanations" in store.table_names():
            rows = read_table(store, "explanations").filter(pl.col("layer").is_in(layers))
            metadata["explained"] = rows.height
            metadata["sample"] = dg.MetadataValue.md(
                "\n".join(
                    f"- `{fid}`: {text}" for fid, text in rows.select("feature_id", "explanation").head(10).rows()
                )
            )
            metadata["dagster/row_count"] = count_rows(store, "explanations")
        if "explanation_scores" in store.table_names():
            scores = read_table(store, "explanation_scores").filter(pl.col("layer").is_in(layers))
            for method, accuracy in scores.group_by("method").agg(pl.col("accuracy").mean()).iter_rows():
                metadata[f"mean_{method}_accuracy"] = round(float(accuracy), 4)
            metadata["by_dictionary"] = dg.MetadataValue.md(_summary_table(store, project.config.dictionaries.name))
        context.add_output_metadata(metadata)

    return per_layer_graph_asset(
        "explanations",
        "feature_stats",
        partitions,
        _explain_layer,
        report,
        group_name="features",
        kinds={"pytorch", "parquet"},
        description="One-line explanations of each layer's densest live features by a chat model (tables "
        "`explanations`, `explanation_scores`: delphi's detection and fuzzing on held-out windows).",
    )

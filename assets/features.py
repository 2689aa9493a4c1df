"""Feature stage: statistics, exemplars, logits, neighbours and labels of every latent, per layer."""

import dagster as dg
import numpy as np
import polars as pl

from assets.layer_steps import layer_fan_out, layer_step, run_layer_bounds
from assets.partitions import per_layer_options
from assets.plots import svg_bars
from assets.resources import ProjectParam, publishes
from circuitdb.dictionaries.stored import stored_dictionary
from circuitdb.features import build_layer_features
from circuitdb.project import Project
from circuitdb.store import count_rows, read_table
from circuitdb.store.vectors import count_vectors, ensure_index, write_vectors


def _encode_layer(project: Project, layer: int, device: str) -> None:
    build_layer_features(
        project.store, project.model_on(device), project.corpus, project.config.dictionaries.name, layer
    )


def _stored_latents(project: Project, first: int, last: int) -> tuple[pl.DataFrame, int]:
    """The `features` rows of the configured set for layers first..last, and how many latents those layers'
    dictionaries have (trained here or imported: the stored widths)."""
    store, name = project.store, project.config.dictionaries.name
    summary = ["feature_id", "dictionary", "layer", "label", "density", "dead"]
    features = read_table(store, "features", summary).filter(
        (pl.col("dictionary") == name) & pl.col("layer").is_between(first, last)
    )
    widths = read_table(store, "dictionaries", ["name", "layer", "n_latents"]).filter(
        (pl.col("name") == name) & pl.col("layer").is_between(first, last)
    )
    return features, int(widths["n_latents"].sum())


def build_feature_stats_asset(partitions: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    """One encoding pass per layer yields two tables, so they are two assets of one computation."""
    kinds = {"pytorch", "parquet"}
    options = per_layer_options(partitions)

    @dg.op(
        name="feature_stats_report",
        ins={"encoded": dg.In(dg.Nothing)},
        out={"feature_stats": dg.Out(dagster_type=dg.Nothing), "exemplars": dg.Out(dagster_type=dg.Nothing)},
    )
    def report(context: dg.OpExecutionContext, project: ProjectParam):
        """Density histogram and label sample of the run's layers; row counts of both tables."""
        layers = [int(key) for key in context.partition_keys]
        features, _ = _stored_latents(project, min(layers), max(layers))
        features = features.filter(pl.col("layer").is_in(layers))
        live = features.filter(~features["dead"])
        sample = live.sample(min(10, live.height), seed=0)
        edges = np.linspace(-6, 0, 25)
        density, _ = np.histogram(np.log10(live["density"].to_numpy().clip(1e-6)), bins=edges)
        store = project.store
        context.add_output_metadata(
            {
                "features": features.height,
                "dead": int(features["dead"].sum()),
                "density_histogram": dg.MetadataValue.md(
                    svg_bars(density.tolist(), edges.tolist(), "live latents by log10(density)")
                ),
                "label_sample": dg.MetadataValue.md(
                    "\n".join(f"- `{fid}`: {label}" for fid, label in sample.select("feature_id", "label").iter_rows())
                ),
                "dagster/row_count": count_rows(store, "features"),
            },
            output_name="feature_stats",
        )
        context.add_output_metadata({"dagster/row_count": count_rows(store, "exemplars")}, output_name="exemplars")
        yield dg.Output(None, "feature_stats")
        yield dg.Output(None, "exemplars")

    fan_out, encode = layer_fan_out("feature_stats"), layer_step("feature_stats", _encode_layer)

    @dg.graph_multi_asset(
        name="feature_stats",
        ins={"dictionaries": dg.AssetIn("dictionaries", dagster_type=dg.Nothing)},
        outs={
            "feature_stats": dg.AssetOut(
                group_name="features",
                kinds=kinds,
                description="Statistics of every latent of the per-layer dictionaries: density, activation "
                "histogram, top/bottom logits, decoder neighbours, a label; dead latents flagged, not dropped. "
                "Writes the `features` table (the asset is named for the computation, the table for its rows).",
            ),
            "exemplars": dg.AssetOut(
                group_name="features",
                kinds=kinds,
                description="Top and quantile exemplar windows of every latent with per-token activations: the "
                "`exemplars` table, from the same encoding pass as feature_stats.",
            ),
        },
        partitions_def=options["partitions_def"],
        backfill_policy=options["backfill_policy"],
    )
    def feature_stats(dictionaries):
        stats, exemplars = report(fan_out(dictionaries).map(lambda start: encode(start)).collect())
        return {"feature_stats": stats, "exemplars": exemplars}

    return feature_stats


@dg.asset_check(
    asset="feature_stats",
    name="every_latent_has_a_row",
    description="The `features` table has one row per latent of every dictionary in the run.",
)
def every_latent_has_a_row(context: dg.AssetCheckExecutionContext, project: ProjectParam) -> dg.AssetCheckResult:
    features, expected = _stored_latents(project, *run_layer_bounds(context))
    return dg.AssetCheckResult(
        passed=features.height == expected, metadata={"rows": features.height, "latents": expected}
    )


def build_feature_vectors_asset(partitions: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    @dg.asset(
        name="feature_vectors",
        deps=["feature_stats"],
        **per_layer_options(partitions, runs_model=False),
        group_name="features",
        kinds={"lancedb"},
    )
    @publishes
    def feature_vectors(context: dg.AssetExecutionContext, project: ProjectParam) -> dg.MaterializeResult:
        """Unit decoder directions, one row per feature, in the LanceDB table `feature_vectors` for
        nearest-feature search (an ANN index once the table is large)."""
        store, name = project.store, project.config.dictionaries.name
        columns = ["feature_id", "dictionary", "layer", "index", "label", "density"]  # what write_vectors stores
        features = read_table(store, "features", columns).filter(pl.col("dictionary") == name)
        written = 0
        for key in context.partition_keys:
            layer = int(key)
            coder, _ = stored_dictionary(store, name, layer)
            written += write_vectors(store, name, layer, coder.W_dec, features.filter(pl.col("layer") == layer))
        indexed = ensure_index(store)
        metadata = {"vectors_in_run": written, "ann_index": indexed, "dagster/row_count": count_vectors(store)}
        return dg.MaterializeResult(metadata=metadata)

    return feature_vectors

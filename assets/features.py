"""Feature stage: statistics, exemplars, logits, neighbours and labels of every latent, per layer."""

import dagster as dg
import numpy as np
import polars as pl

from assets.partitions import per_layer_options
from assets.plots import svg_bars
from assets.resources import ProjectResource
from circuitdb.dictionaries.stored import stored_dictionary
from circuitdb.features import build_layer_features
from circuitdb.store import Store, count_rows, read_table
from circuitdb.store.vectors import count_vectors, ensure_index, write_vectors


def build_feature_stats_asset(partitions: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    """One encoding pass per layer yields two tables, so they are two assets of one computation."""
    kinds = {"pytorch", "parquet"}

    @dg.multi_asset(
        specs=[
            dg.AssetSpec(
                "feature_stats",
                deps=["dictionaries"],
                group_name="features",
                kinds=kinds,
                description="Statistics of every latent of the per-layer dictionaries: density, activation "
                "histogram, top/bottom logits, decoder neighbours, a label; dead latents flagged, not dropped. "
                "Writes the `features` table (the asset is named for the computation, the table for its rows).",
            ),
            dg.AssetSpec(
                "exemplars",
                deps=["dictionaries"],
                group_name="features",
                kinds=kinds,
                description="Top and quantile exemplar windows of every latent with per-token activations: the "
                "`exemplars` table, from the same encoding pass as feature_stats.",
            ),
        ],
        check_specs=[
            dg.AssetCheckSpec(
                "every_latent_has_a_row",
                asset="feature_stats",
                description="The `features` table has one row per latent of every dictionary in the run.",
            )
        ],
        **per_layer_options(partitions),
    )
    def feature_stats(context: dg.AssetExecutionContext, project: ProjectResource):
        """One encoding pass per layer for both tables."""
        config, store, lm, corpus = project.open_stage()
        name = config.dictionaries.name
        counts = {int(key): build_layer_features(store, lm, corpus, name, int(key)) for key in context.partition_keys}
        summary = ["feature_id", "dictionary", "layer", "label", "density", "dead"]
        features = read_table(store, "features", summary).filter(
            (pl.col("dictionary") == name) & pl.col("layer").is_in(list(counts))
        )
        widths = read_table(store, "dictionaries", ["name", "layer", "n_latents"]).filter(
            (pl.col("name") == name) & pl.col("layer").is_in(list(counts))
        )
        expected = int(widths["n_latents"].sum())  # trained here or imported: the stored widths
        live = features.filter(~features["dead"])
        sample = live.sample(min(10, live.height), seed=0)
        edges = np.linspace(-6, 0, 25)
        density, _ = np.histogram(np.log10(live["density"].to_numpy().clip(1e-6)), bins=edges)
        yield dg.MaterializeResult(
            asset_key="feature_stats",
            metadata={
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
        )
        yield dg.MaterializeResult(
            asset_key="exemplars",
            metadata={
                "exemplars_in_run": sum(c[1] for c in counts.values()),
                "dagster/row_count": count_rows(store, "exemplars"),
            },
        )
        yield dg.AssetCheckResult(
            asset_key="feature_stats",
            check_name="every_latent_has_a_row",
            passed=features.height == expected,
            metadata={"rows": features.height, "latents": expected},
        )

    return feature_stats


def build_feature_vectors_asset(partitions: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    @dg.asset(
        name="feature_vectors",
        deps=["feature_stats"],
        **per_layer_options(partitions, runs_model=False),
        group_name="features",
        kinds={"lancedb"},
    )
    def feature_vectors(context: dg.AssetExecutionContext, project: ProjectResource) -> dg.MaterializeResult:
        """Unit decoder directions, one row per feature, in the LanceDB table `feature_vectors` for
        nearest-feature search (an ANN index once the table is large)."""
        config = project.load()
        store = Store(config.store)
        name = config.dictionaries.name
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

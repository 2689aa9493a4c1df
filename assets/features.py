"""Feature stage: statistics, exemplars, logits, neighbours and labels of every latent, per layer."""

import dagster as dg
import polars as pl

from circuitdb.features import build_layer_features, load_stored_dictionary
from circuitdb.store import Store, read_table
from circuitdb.store.vectors import ensure_index, write_vectors
from orchestration.partitions import per_layer_options
from orchestration.resources import ProjectResource


def build_feature_stats_asset(partitions: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    @dg.asset(
        name="feature_stats",
        deps=["dictionaries"],
        **per_layer_options(partitions),
        group_name="features",
        check_specs=[dg.AssetCheckSpec("every_latent_has_a_row", asset="feature_stats")],
    )
    def feature_stats(context: dg.AssetExecutionContext, project: ProjectResource) -> dg.MaterializeResult:
        """`features` and `exemplars` tables for the per-layer dictionaries; dead latents are flagged, not dropped."""
        config, store, lm, corpus = project.open_stage()
        name = config.dictionaries.name
        counts = {int(key): build_layer_features(store, lm, corpus, name, int(key)) for key in context.partition_keys}
        features = read_table(store, "features").filter(
            (pl.col("dictionary") == name) & pl.col("layer").is_in(list(counts))
        )
        expected = config.dictionaries.dictionary.n_latents * len(counts)
        sample = features.filter(~features["dead"]).sample(min(10, features.height), seed=0)
        return dg.MaterializeResult(
            metadata={
                "features": sum(c[0] for c in counts.values()),
                "exemplars": sum(c[1] for c in counts.values()),
                "dead": int(features["dead"].sum()),
                "label_sample": dg.MetadataValue.md(
                    "\n".join(f"- `{fid}`: {label}" for fid, label in sample.select("feature_id", "label").iter_rows())
                ),
                "dagster/row_count": features.height,
            },
            check_results=[
                dg.AssetCheckResult(
                    check_name="every_latent_has_a_row",
                    passed=features.height == expected,
                    metadata={"rows": features.height, "latents": expected},
                )
            ],
        )

    return feature_stats


def build_feature_vectors_asset(partitions: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    @dg.asset(
        name="feature_vectors",
        deps=["feature_stats"],
        **per_layer_options(partitions),
        group_name="features",
    )
    def feature_vectors(context: dg.AssetExecutionContext, project: ProjectResource) -> dg.MaterializeResult:
        """Unit decoder directions in LanceDB for nearest-feature search (ANN index once the table is large)."""
        config = project.load()
        store = Store(config.store)
        name = config.dictionaries.name
        features = read_table(store, "features").filter(pl.col("dictionary") == name)
        written = 0
        for key in context.partition_keys:
            layer = int(key)
            coder, _ = load_stored_dictionary(store, name, layer)
            written += write_vectors(store, name, layer, coder.W_dec, features.filter(pl.col("layer") == layer))
        indexed = ensure_index(store)
        return dg.MaterializeResult(metadata={"vectors": written, "ann_index": indexed, "dagster/row_count": written})

    return feature_vectors

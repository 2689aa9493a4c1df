"""Feature stage: statistics, exemplars, logits, neighbours and labels of every latent, per layer."""

import dagster as dg
import polars as pl

from circuitdb.corpus import load_stored_corpus
from circuitdb.features import build_layer_features
from circuitdb.models import load_model
from circuitdb.store import Store, read_table
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
        config = project.load()
        store = Store(config.store)
        lm = load_model(config.model.spec, config.model.device)
        corpus = load_stored_corpus(store, config.corpus.name)
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

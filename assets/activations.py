"""Activation stage: hook-point activations of the stored corpus, partitioned by layer.

A backfill of many layers runs as one Dagster run (single-run backfill policy) and so as one
forward pass per batch that captures every requested layer at once, instead of one pass each.
"""

import dagster as dg

from assets.partitions import per_layer_options
from assets.resources import ProjectParam, publishes
from circuitdb.harvest import harvest_layers
from circuitdb.store import count_rows


def build_activations_asset(partitions: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    @dg.asset(
        name="activations",
        deps=["corpus_tokens"],
        **per_layer_options(partitions),
        group_name="activations",
        kinds={"pytorch", "safetensors"},
    )
    @publishes
    def activations(context: dg.AssetExecutionContext, project: ProjectParam) -> dg.MaterializeResult:
        """Activations at the configured hook kinds of each layer: fp16 safetensors shards under
        `<store>/activations/`, listed with their checksums in the `activation_shards` table."""
        store, layers = project.store, [int(key) for key in context.partition_keys]
        shards = harvest_layers(store, project.model, project.corpus, layers, project.config.harvest)
        return dg.MaterializeResult(
            metadata={
                "layers": dg.MetadataValue.text(", ".join(map(str, layers))),
                "hooks": dg.MetadataValue.text(", ".join(sorted(set(shards["hook"])))),
                "shards": shards.height,
                "tokens_per_hook": int(shards.filter(shards["hook"] == shards["hook"][0])["n_tokens"].sum()),
                "dagster/row_count": count_rows(store, "activation_shards"),
            }
        )

    return activations

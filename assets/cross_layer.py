"""Cross-layer transcoder stage: one CLT over every project layer, on the same activations."""

import dagster as dg

from assets.partitions import gpu_step
from assets.resources import ProjectParam, publishes
from circuitdb.dictionaries.pipeline import build_cross_layer_transcoder
from circuitdb.store import count_rows


def build_cross_layer_asset(layers: list[int]) -> dg.AssetsDefinition:
    @dg.asset(
        name="cross_layer_transcoder",
        deps=["activations"],
        group_name="dictionaries",
        kinds={"pytorch", "safetensors", "parquet"},
        **gpu_step(),
    )
    @publishes
    def cross_layer_transcoder(project: ProjectParam) -> dg.MaterializeResult:
        """A cross-layer transcoder reading every mlp_in.l and writing to every later mlp_out (config `clt`)."""
        store = project.store
        rows = build_cross_layer_transcoder(store, project.model, project.corpus, layers, project.config.clt)
        table = "| layer | fvu_excl_pos0 | l0 | dead_frac |\n|---|---|---|---|\n" + "\n".join(
            f"| {r['layer']} | {r['fvu_excl_pos0']:.4g} | {r['l0']:.4g} | {r['dead_frac']:.4g} |" for r in rows
        )
        return dg.MaterializeResult(
            metadata={
                "per_layer": dg.MetadataValue.md(table),
                "delta_ce": rows[0]["delta_ce"],
                "kl": rows[0]["kl"],
                "dagster/row_count": count_rows(store, "dictionaries"),
            }
        )

    return cross_layer_transcoder

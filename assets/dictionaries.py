"""Dictionary stage: one sparse dictionary per layer, trained on the stored activations.

A multi-layer backfill is one run (single-run policy) that loads the model once and trains the
layers in turn; the quality check covers every layer the run trained.
"""

import dagster as dg

from assets.partitions import per_layer_options
from assets.plots import svg_lines
from assets.resources import ProjectResource
from circuitdb.dictionaries.pipeline import build_layer_dictionary
from circuitdb.store import count_rows

METRIC_COLUMNS = ("layer", "fvu", "fvu_excl_pos0", "l0", "dead_frac", "delta_ce", "kl")


def build_dictionaries_asset(partitions: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    @dg.asset(
        name="dictionaries",
        deps=["activations"],
        **per_layer_options(partitions),
        group_name="dictionaries",
        kinds={"pytorch", "safetensors", "parquet"},
        check_specs=[
            dg.AssetCheckSpec(
                "quality",
                asset="dictionaries",
                description="Held-out FVU (excl. position 0), dead fraction and L0 within "
                "dictionaries.max_fvu_excl_pos0, max_dead_frac and l0_range (a warning, not a failed run)",
            )
        ],
    )
    def dictionaries(context: dg.AssetExecutionContext, project: ProjectResource) -> dg.MaterializeResult:
        """Per-layer sparse dictionaries (per-layer transcoders by default): weights under
        `<store>/dictionaries/<name>/`, one row each in the `dictionaries` table with held-out metrics."""
        config, store, lm, corpus = project.open_stage()
        cfg = config.dictionaries
        rows = []
        for key in context.partition_keys:
            row = build_layer_dictionary(store, lm, corpus, int(key), cfg)
            context.log.info(f"layer {key}: fvu_excl_pos0={row['fvu_excl_pos0']:.3f} l0={row['l0']:.1f}")
            rows.append(row)
        failures = [
            f"layer {r['layer']}: " + ", ".join(problem)
            for r in rows
            if (
                problem := [
                    text
                    for bad, text in (
                        (r["fvu_excl_pos0"] > cfg.max_fvu_excl_pos0, f"fvu_excl_pos0 {r['fvu_excl_pos0']:.3f}"),
                        (r["dead_frac"] > cfg.max_dead_frac, f"dead_frac {r['dead_frac']:.3f}"),
                        (not cfg.l0_range[0] <= r["l0"] <= cfg.l0_range[1], f"l0 {r['l0']:.1f}"),
                    )
                    if bad
                ]
            )
        ]
        table = "| " + " | ".join(METRIC_COLUMNS) + " |\n|" + "---|" * len(METRIC_COLUMNS) + "\n"
        table += "\n".join("| " + " | ".join(f"{r[c]:.4g}" for c in METRIC_COLUMNS) + " |" for r in rows)
        curves = svg_lines({f"layer {r['layer']}": r["fvu_curve"] for r in rows}, "training FVU (every 10 steps)")
        return dg.MaterializeResult(
            metadata={
                "metrics": dg.MetadataValue.md(table),
                "loss_curves": dg.MetadataValue.md(curves),
                "mean_fvu_excl_pos0": sum(r["fvu_excl_pos0"] for r in rows) / len(rows),
                "layers_in_run": len(rows),
                "pages": dg.MetadataValue.md(
                    "\n".join(
                        f"- [layer {r['layer']}: {cfg.name}/{r['layer']}/0 …]"
                        f"({config.viewer_url.rstrip('/')}/feature/{cfg.name}/{r['layer']}/0)"
                        for r in rows
                    )
                    + f"\n\nAll dictionaries: {config.viewer_url.rstrip('/')}/"
                ),
                "dagster/row_count": count_rows(store, "dictionaries"),
            },
            check_results=[
                dg.AssetCheckResult(
                    check_name="quality",
                    passed=not failures,
                    severity=dg.AssetCheckSeverity.WARN,
                    metadata={"failures": dg.MetadataValue.text("\n".join(failures) or "none")},
                )
            ],
        )

    return dictionaries

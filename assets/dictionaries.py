"""Dictionary stage: one sparse dictionary per layer, trained on the stored activations.

A multi-layer backfill is one run (single-run policy) with one step per layer (assets/layer_steps.py):
in-process they train in turn on the once-loaded model, with the multiprocess or Kubernetes executor in
parallel, one GPU each. The quality check covers every layer the run trained.
"""

import dagster as dg
import polars as pl

from assets.layer_steps import per_layer_graph_asset, run_layer_bounds
from assets.plots import svg_lines
from assets.resources import ProjectParam
from circuitdb.dictionaries.pipeline import build_layer_dictionary
from circuitdb.project import Project
from circuitdb.store import count_rows, read_table

METRIC_COLUMNS = ("layer", "fvu", "fvu_excl_pos0", "l0", "dead_frac", "delta_ce", "kl")


def _train_layer(project: Project, layer: int, device: str) -> None:
    build_layer_dictionary(project.store, project.model_on(device), project.corpus, layer, project.config.dictionaries)


def _rows(project: Project, first: int, last: int) -> list[dict]:
    """The `dictionaries` rows of the configured set for layers first..last."""
    table = read_table(project.store, "dictionaries")
    chosen = table.filter(
        (pl.col("name") == project.config.dictionaries.name) & pl.col("layer").is_between(first, last)
    )
    return chosen.sort("layer").to_dicts()


def build_dictionaries_asset(partitions: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    @dg.op(name="dictionaries_report", ins={"trained": dg.In(dg.Nothing)}, out=dg.Out(dagster_type=dg.Nothing))
    def report(context: dg.OpExecutionContext, project: ProjectParam) -> None:
        """The run's metrics, loss curves and viewer links, as the materialization's metadata."""
        config = project.config
        layers = [int(key) for key in context.partition_keys]
        rows = [r for r in _rows(project, min(layers), max(layers)) if r["layer"] in layers]
        for r in rows:
            context.log.info(f"layer {r['layer']}: fvu_excl_pos0={r['fvu_excl_pos0']:.3f} l0={r['l0']:.1f}")
        table = "| " + " | ".join(METRIC_COLUMNS) + " |\n|" + "---|" * len(METRIC_COLUMNS) + "\n"
        table += "\n".join("| " + " | ".join(f"{r[c]:.4g}" for c in METRIC_COLUMNS) + " |" for r in rows)
        curves = svg_lines({f"layer {r['layer']}": r["fvu_curve"] for r in rows}, "training FVU (every 10 steps)")
        viewer = config.viewer_url.rstrip("/")
        name = config.dictionaries.name
        context.add_output_metadata(
            {
                "metrics": dg.MetadataValue.md(table),
                "loss_curves": dg.MetadataValue.md(curves),
                "mean_fvu_excl_pos0": sum(r["fvu_excl_pos0"] for r in rows) / len(rows),
                "layers_in_run": len(rows),
                "pages": dg.MetadataValue.md(
                    "\n".join(
                        f"- [layer {r['layer']}: {name}/{r['layer']}/0 …]({viewer}/feature/{name}/{r['layer']}/0)"
                        for r in rows
                    )
                    + f"\n\nAll dictionaries: {viewer}/"
                ),
                "dagster/row_count": count_rows(project.store, "dictionaries"),
            }
        )

    return per_layer_graph_asset(
        "dictionaries",
        "activations",
        partitions,
        _train_layer,
        report,
        group_name="dictionaries",
        kinds={"pytorch", "safetensors", "parquet"},
        description="Per-layer sparse dictionaries (per-layer transcoders by default): weights under "
        "`<store>/dictionaries/<name>/`, one row each in the `dictionaries` table with held-out metrics.",
    )


@dg.asset_check(
    asset="dictionaries",
    name="quality",
    description="Held-out FVU (excl. position 0), dead fraction and L0 within dictionaries.max_fvu_excl_pos0, "
    "max_dead_frac and l0_range (a warning, not a failed run)",
)
def dictionaries_quality(context: dg.AssetCheckExecutionContext, project: ProjectParam) -> dg.AssetCheckResult:
    cfg = project.config.dictionaries
    failures = []
    for r in _rows(project, *run_layer_bounds(context)):
        problem = [
            text
            for bad, text in (
                (r["fvu_excl_pos0"] > cfg.max_fvu_excl_pos0, f"fvu_excl_pos0 {r['fvu_excl_pos0']:.3f}"),
                (r["dead_frac"] > cfg.max_dead_frac, f"dead_frac {r['dead_frac']:.3f}"),
                (not cfg.l0_range[0] <= r["l0"] <= cfg.l0_range[1], f"l0 {r['l0']:.1f}"),
            )
            if bad
        ]
        if problem:
            failures.append(f"layer {r['layer']}: " + ", ".join(problem))
    return dg.AssetCheckResult(
        passed=not failures,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"failures": dg.MetadataValue.text("\n".join(failures) or "none")},
    )

"""Sweep stage: the dictionary recipe at several k and seeds on one layer (config `sweep`), one partition
per (k, seed), each point into the `sweeps` table; the metadata plots the sweep so far (FVU and ΔCE per k,
transcoders against skip transcoders when `compare_skip`)."""

import dagster as dg
import polars as pl

from assets.partitions import gpu_step
from assets.plots import svg_lines
from assets.resources import ProjectParam, publishes
from circuitdb.config import ProjectConfig
from circuitdb.errors import CircuitDBError
from circuitdb.store import count_rows, read_table
from circuitdb.store.sweeps import mean_and_interval, summary
from circuitdb.sweeps import PointExplanations, sweep_layer

sweep_key = dg.AssetKey("sweep")


def sweep_partitions(config: ProjectConfig) -> dg.MultiPartitionsDefinition:
    return dg.MultiPartitionsDefinition(
        {
            "k": dg.StaticPartitionsDefinition([str(k) for k in config.sweep.ks]),
            "seed": dg.StaticPartitionsDefinition([str(seed) for seed in range(config.sweep.seeds)]),
        }
    )


def _pareto(rows: pl.DataFrame, layer: int) -> dict:
    """Per variant, FVU (excl. position 0) and ΔCE by increasing k, mean over seeds, with the intervals; and
    where points had features explained, their scores (features scored per seed, mean accuracies)."""
    table = summary(rows)
    variants = {False: "transcoder", True: "skip transcoder"}
    ks = sorted(set(table["k"]))
    plots = {}
    for metric, title in (("fvu_excl_pos0", "FVU excl. pos 0"), ("delta_ce", "ΔCE")):
        series = {
            variants[skip]: table.filter(pl.col("skip") == skip).sort("k")[metric].to_list()
            for skip in sorted(set(table["skip"]))
        }
        plots[f"{metric}_by_k"] = dg.MetadataValue.md(
            svg_lines(series, f"layer {layer}: {title} at k = {', '.join(map(str, ks))} (L0 = k)")
        )
    lines = ["| variant | k | seeds | FVU excl. pos 0 | ΔCE | L0 |", "|---|---|---|---|---|---|"]
    scored = ["| variant | k | scored features by seed | detection | fuzzing |", "|---|---|---|---|---|"]
    for r in table.iter_rows(named=True):
        variant = f"| {variants[r['skip']]} | {r['k']} | {r['seeds']} |"
        lines.append(
            f"{variant} {mean_and_interval(r, 'fvu_excl_pos0')} | {mean_and_interval(r, 'delta_ce')} | {r['l0']:.1f} |"
        )
        at_k = rows.filter((pl.col("skip") == r["skip"]) & (pl.col("k") == r["k"])).sort("seed")["explained_features"]
        if at_k.is_not_null().any():
            counts = "/".join(str(n) for n in at_k.fill_null(0).to_list())
            scores = " | ".join(mean_and_interval(r, score) for score in ("detection_acc", "fuzzing_acc"))
            scored.append(f"| {variants[r['skip']]} | {r['k']} | {counts} | {scores} |")
    metadata = plots | {"points": dg.MetadataValue.md("\n".join(lines))}
    if len(scored) > 2:
        metadata["explanation_scores"] = dg.MetadataValue.md("\n".join(scored))
    return metadata


def build_sweep_asset(config: ProjectConfig) -> dg.AssetsDefinition:
    @dg.asset(
        key=sweep_key,
        deps=[dg.AssetDep("activations", partition_mapping=dg.AllPartitionMapping())],
        partitions_def=sweep_partitions(config),
        group_name="dictionaries",
        kinds={"pytorch", "parquet"},
        **gpu_step(),
    )
    @publishes
    def sweep(context: dg.AssetExecutionContext, project: ProjectParam) -> dg.MaterializeResult:
        """One point of a sparsity sweep: the recipe at this partition's k and seed on `sweep.layer`, evaluated
        on the held-out split (FVU both ways, ΔCE, KL, L0, dead fraction; with `sweep.explain_features`, the
        explanation scores of its densest latents) into the `sweeps` table."""
        config, store = project.config, project.store
        layer = config.sweep.layer
        if layer is None:
            raise CircuitDBError("set sweep.layer to the layer to sweep")
        keys = context.partition_key.keys_by_dimension
        skips = [False, True] if config.sweep.compare_skip else None
        explain = None
        if config.sweep.explain_features:
            explain = PointExplanations(project.explainer(), config.sweep.explain_features)
        point = [int(keys["k"])], [int(keys["seed"])]
        sweep_layer(store, project.model, project.corpus, config.dictionaries, layer, *point, skips, explain)
        swept = read_table(store, "sweeps").filter(
            (pl.col("dictionary") == config.dictionaries.name) & (pl.col("layer") == layer)
        )
        return dg.MaterializeResult(metadata=_pareto(swept, layer) | {"dagster/row_count": count_rows(store, "sweeps")})

    return sweep

"""Per-layer work as one Dagster step per layer, so that an executor can run the layers in parallel.

A run over a range of layer partitions (one run, single-run backfill) fans out into one step per layer
(`<asset>_layer[layer_<L>]`, a dynamic output per partition key), then joins in one report step that
writes the materialization's metadata. Nothing flows between the steps but order (Nothing-typed outputs):
each layer reads and writes the store itself, so no IO manager is involved and steps may run in separate
processes or Kubernetes pods. Each layer step is in the `gpu` pool, asks Kubernetes for one GPU, and
with several GPUs on one machine claims one for itself (`claimed_device`).
"""

import multiprocessing
import os
from collections.abc import Callable

import dagster as dg
import torch

from assets.partitions import POOL, gpu_step, per_layer_options
from assets.resources import ProjectParam, publishes
from circuitdb.models import claimed_device, resolve_device
from circuitdb.project import Project

LayerWork = Callable[[Project, int, str], None]
"""(project, layer, device) → None: the work of one layer, writing its results into the store."""


def layer_fan_out(asset: str) -> dg.OpDefinition:
    @dg.op(name=f"{asset}_layers", ins={"after": dg.In(dg.Nothing)}, out=dg.DynamicOut(dagster_type=dg.Nothing))
    def fan_out(context: dg.OpExecutionContext):
        """One step per layer partition of the run."""
        for key in context.partition_keys:
            yield dg.DynamicOutput(None, mapping_key=f"layer_{key}")

    return fan_out


def layer_step(asset: str, work: LayerWork) -> dg.OpDefinition:
    options = gpu_step()

    @dg.op(
        name=f"{asset}_layer",
        ins={"start": dg.In(dg.Nothing)},
        out=dg.Out(dagster_type=dg.Nothing),
        pool=options["pool"],
        tags=options["op_tags"],
    )
    @publishes
    def step(context: dg.OpExecutionContext, project: ProjectParam) -> None:
        layer = int(context.get_mapping_key().removeprefix("layer_"))
        with claimed_device(project.config.model.device) as device:
            if resolve_device(device).type == "cpu":
                _share_cores(context)
            work(project, layer, device)

    return step


def per_layer_graph_asset(
    name: str,
    upstream: str,
    partitions: dg.PartitionsDefinition,
    work: LayerWork,
    report: dg.OpDefinition,
    **spec,
) -> dg.AssetsDefinition:
    """The asset `name` after `upstream`: fan-out → one `work` step per layer → `report` (which writes the
    materialization's metadata); `spec` holds the asset's group, kinds and description."""
    options = per_layer_options(partitions)
    fan_out, step = layer_fan_out(name), layer_step(name, work)

    @dg.graph_asset(
        name=name,
        ins={"after": dg.AssetIn(upstream, dagster_type=dg.Nothing)},
        partitions_def=options["partitions_def"],
        backfill_policy=options["backfill_policy"],
        **spec,
    )
    def per_layer(after):
        return report(fan_out(after).map(lambda start: step(start)).collect())

    return per_layer


def _share_cores(context: dg.OpExecutionContext) -> None:
    """Steps the multiprocess executor runs side by side on the CPU split its cores by the `gpu` pool's limit:
    each process would otherwise start one thread per core, and the oversubscribed threads spin against each
    other (README, benchmarks/parallel.py). In-process steps take turns and keep every core."""
    if multiprocessing.parent_process() is None:
        return
    cores = os.cpu_count() or 1
    limit = context.instance.event_log_storage.get_concurrency_info(POOL).limit
    torch.set_num_threads(max(1, cores // (limit or cores)))


def run_layer_bounds(context: dg.AssetCheckExecutionContext) -> tuple[int, int]:
    """First and last layer partition of the run a check runs in (all layers when it names none)."""
    tags = context.run.tags
    if "dagster/partition" in tags:
        return int(tags["dagster/partition"]), int(tags["dagster/partition"])
    start, end = tags.get("dagster/asset_partition_range_start"), tags.get("dagster/asset_partition_range_end")
    return (int(start), int(end)) if start is not None and end is not None else (0, 1 << 30)

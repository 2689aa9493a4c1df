"""Partitions: one per model layer (dictionaries and their statistics rebuild layer by layer), and one per
attribution graph (its prompt)."""

from __future__ import annotations

import warnings

import dagster as dg

from circuitdb.config import ProjectConfig
from circuitdb.errors import CircuitDBError
from circuitdb.models import count_layers


def project_layers(config: ProjectConfig) -> list[int]:
    """The layers the project studies: `harvest.layers` (checked against the model), or all of them."""
    n_layers = count_layers(config.model.spec)
    if config.harvest.layers is None:
        return list(range(n_layers))
    for layer in config.harvest.layers:
        if not 0 <= layer < n_layers:
            raise CircuitDBError(
                f"layer {layer} out of range: {config.model.spec} has {n_layers} layers (0-{n_layers - 1})"
            )
    return sorted(set(config.harvest.layers))


def layer_partitions(config: ProjectConfig) -> dg.StaticPartitionsDefinition:
    return dg.StaticPartitionsDefinition([str(layer) for layer in project_layers(config)])


# Single-run backfills are Dagster's documented way to run many partitions in one process.
warnings.filterwarnings("ignore", category=dg.BetaWarning, message=".*backfill_policy.*")


POOL = "gpu"
"""The concurrency pool of every model-running step (its limit, set in the instance, caps them)."""
GPU_POD = {"container_config": {"resources": {"limits": {"nvidia.com/gpu": "1"}, "requests": {"nvidia.com/gpu": "1"}}}}
"""What a model-running step asks of Kubernetes when steps run as jobs (`k8s_job_executor`): one GPU."""


def gpu_step() -> dict:
    """Options of every model-running asset: in the `gpu` pool (the instance's pool limit caps how many run at
    once), and one GPU per step when steps are Kubernetes jobs."""
    return {"pool": POOL, "op_tags": {"dagster-k8s/config": GPU_POD}}


def per_layer_options(partitions: dg.PartitionsDefinition, runs_model: bool = True) -> dict:
    """Options of every per-layer asset: a multi-layer backfill is one run (the model loads once and the
    harvest captures all layers in one forward pass per batch), on a GPU when it runs the model."""
    options = {"partitions_def": partitions, "backfill_policy": dg.BackfillPolicy.single_run()}
    return options | (gpu_step() if runs_model else {})


RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"
"""Tags of a run over a range of partitions (a single-run backfill), as Dagster's backfills set them."""

prompt_partitions = dg.DynamicPartitionsDefinition(name="prompts")
"""One key per graph: the slug of a configured prompt or of a graph already built, or, for a partition a
user adds in the UI, the prompt text itself."""

prompt_set_partitions = dg.DynamicPartitionsDefinition(name="prompt_sets")
"""One key per prompt set: its name (the stem of its file in attribution.prompt_set_files, or a set defined by
`circuitdb graph build --set`)."""

set_prompt_partitions = dg.DynamicPartitionsDefinition(name="set_prompts")
"""One key per prompt of a prompt set: 'SET:POSITION' (a set's name holds no ':'); the keys of a set are added in
order, so a range of them is a single-run backfill of its graphs."""


def set_prompt_key(name: str, position: int) -> str:
    return f"{name}:{position}"


def split_set_prompt_key(key: str) -> tuple[str, int]:
    name, _, position = key.rpartition(":")
    return name, int(position)

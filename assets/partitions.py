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


def per_layer_options(partitions: dg.PartitionsDefinition) -> dict:
    """Options of every per-layer model asset: a multi-layer backfill is one run (the model loads once
    and the harvest captures all layers in one forward pass per batch), in the `gpu` pool."""
    return {"partitions_def": partitions, "backfill_policy": dg.BackfillPolicy.single_run(), "pool": "gpu"}


prompt_partitions = dg.DynamicPartitionsDefinition(name="prompts")
"""One key per graph: the slug of a configured prompt or of a graph already built, or, for a partition a
user adds in the UI, the prompt text itself."""

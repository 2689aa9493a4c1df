"""Partitions: one per model layer, so dictionaries and their stats can be rebuilt layer by layer."""

from __future__ import annotations

import dagster as dg

from circuitdb.config import ProjectConfig
from circuitdb.models import count_layers


def project_layers(config: ProjectConfig) -> list[int]:
    """The layers the project studies: `harvest.layers`, or every layer of the model."""
    return config.harvest.layers if config.harvest.layers is not None else list(range(count_layers(config.model.spec)))


def layer_partitions(config: ProjectConfig) -> dg.StaticPartitionsDefinition:
    return dg.StaticPartitionsDefinition([str(layer) for layer in project_layers(config)])

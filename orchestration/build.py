"""Materialize the whole default pipeline in-process (what `circuitdb build` and `make demo` run)."""

from __future__ import annotations

import dagster as dg

from circuitdb.config import ProjectConfig
from orchestration.definitions import build_definitions
from orchestration.partitions import project_layers
from orchestration.resources import ProjectResource

RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"


def build_all(config: ProjectConfig, project: ProjectResource) -> dg.ExecuteInProcessResult:
    """Run every asset for every layer partition in one run (one forward pass over all layers)."""
    defs = build_definitions(config, project)
    layers = project_layers(config)
    assets = list(defs.assets or [])
    tags = {RANGE_START: str(layers[0]), RANGE_END: str(layers[-1])}
    return dg.materialize(assets, resources={"project": project}, tags=tags, raise_on_error=True)

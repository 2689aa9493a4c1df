"""Materialize the whole default pipeline in-process (what `circuitdb build` and `make demo` run)."""

from __future__ import annotations

import dataclasses

import dagster as dg
import yaml

from circuitdb.config import ProjectConfig
from circuitdb.errors import CircuitDBError
from circuitdb.store import atomic_write_bytes
from orchestration.definitions import build_definitions
from orchestration.partitions import project_layers
from orchestration.resources import ProjectResource

RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"
EFFECTIVE_CONFIG = "circuitdb.effective.yaml"
QUIET_LOGS = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
"""The CLI reports progress bars and a summary itself; a failure surfaces as one CircuitDBError line."""


def build_all(config: ProjectConfig) -> dg.ExecuteInProcessResult:
    """Run every asset for every layer partition in one run (one forward pass over all layers).

    The merged configuration is written to `<store>/circuitdb.effective.yaml` first: every asset
    reads exactly it, and it records how the store was built.
    """
    layers = project_layers(config)  # validates model and layers before anything is written
    config = dataclasses.replace(config, store=str(config.store_path))
    effective = config.store_path / EFFECTIVE_CONFIG
    atomic_write_bytes(effective, yaml.safe_dump(dataclasses.asdict(config), sort_keys=False).encode())
    project = ProjectResource(config_file=str(effective))
    defs = build_definitions(config, project)
    tags = {RANGE_START: str(layers[0]), RANGE_END: str(layers[-1])}
    try:
        return dg.materialize(list(defs.assets or []), resources={"project": project}, tags=tags, run_config=QUIET_LOGS)
    except dg.DagsterUserCodeExecutionError as exc:
        if isinstance(exc.user_exception, CircuitDBError):
            raise exc.user_exception from None
        raise

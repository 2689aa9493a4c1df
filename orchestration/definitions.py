"""The Definitions: every asset, resource and job of circuitdb, assembled in one place.

`dagster dev -w workspace.yaml` loads `defs` from here; `circuitdb build` materializes the same
assets in-process through `build.py`.
"""

from __future__ import annotations

import dagster as dg

from assets.activations import build_activations_asset
from assets.attribution import attribution_graphs, prompts_file_sensor, refresh_stale_graphs
from assets.corpus import corpus_tokens
from assets.cross_layer import build_cross_layer_asset
from assets.dictionaries import build_dictionaries_asset
from assets.features import build_feature_stats_asset, build_feature_vectors_asset
from circuitdb.config import ProjectConfig, load_config
from orchestration.partitions import layer_partitions, project_layers
from orchestration.resources import ProjectResource


def build_definitions(config: ProjectConfig, project: ProjectResource | None = None) -> dg.Definitions:
    """Definitions for a project configuration (layer partitions depend on the model)."""
    layers = layer_partitions(config)
    assets = [
        corpus_tokens,
        build_activations_asset(layers),
        build_dictionaries_asset(layers),
        build_feature_stats_asset(layers),
        build_feature_vectors_asset(layers),
        attribution_graphs,
    ]
    if config.clt.enabled:
        assets.append(build_cross_layer_asset(project_layers(config)))
    return dg.Definitions(
        assets=assets,
        sensors=[prompts_file_sensor],
        schedules=[refresh_stale_graphs],
        resources={"project": project or ProjectResource()},
    )


defs = build_definitions(load_config())

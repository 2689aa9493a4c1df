"""The Definitions: every asset, resource, sensor and schedule of circuitdb, assembled in one place.

`defs` is loaded lazily (nothing reads the configuration or the model at import time): the UI's code
server calls it with `CIRCUITDB_CONFIG` pointing at the store's effective configuration, so its layer
partitions and prompts are the build's. `circuitdb build` materializes the same assets in-process
through `build.py`.
"""

from __future__ import annotations

import dagster as dg

from assets.activations import build_activations_asset
from assets.attribution import attribution_graphs
from assets.circuits import prompt_set_circuits, set_graphs
from assets.corpus import corpus_tokens
from assets.cross_layer import build_cross_layer_asset
from assets.dictionaries import build_dictionaries_asset, dictionaries_quality
from assets.explanations import build_explanations_asset
from assets.features import build_feature_stats_asset, build_feature_vectors_asset, every_latent_has_a_row
from assets.integrity import files_intact_checks
from assets.partitions import layer_partitions, project_layers
from assets.resources import ProjectResource
from assets.sweeps import build_sweep_asset
from circuitdb.config import ProjectConfig, load_config
from orchestration.executors import executor_from_environment
from orchestration.schedules import refresh_stale_graphs, refresh_stale_sets
from orchestration.sensors import prompt_sets_sensor, prompts_file_sensor, set_circuits_sensor


def build_definitions(config: ProjectConfig, project: ProjectResource | None = None) -> dg.Definitions:
    """Definitions for a project configuration (layer partitions depend on the model)."""
    layers = layer_partitions(config)
    assets = [
        corpus_tokens,
        build_activations_asset(layers),
        build_dictionaries_asset(layers),
        build_feature_stats_asset(layers),
        build_feature_vectors_asset(layers),
        build_explanations_asset(layers),
        attribution_graphs,
        set_graphs,
        prompt_set_circuits,
        build_sweep_asset(config),
    ]
    if config.clt.enabled:
        assets.append(build_cross_layer_asset(project_layers(config)))
    per_layer = dg.define_asset_job(
        PER_LAYER_JOB,
        selection=dg.AssetSelection.assets(*[a for a in assets if a.partitions_def == layers]),
        description="Every per-layer asset for a range of layers: one run, one step per layer where the work is "
        "per layer (parallel under CIRCUITDB_EXECUTOR=multiprocess or on Kubernetes).",
    )
    return dg.Definitions(
        assets=assets,
        jobs=[per_layer],
        asset_checks=[*files_intact_checks(), dictionaries_quality, every_latent_has_a_row],
        sensors=[prompts_file_sensor, prompt_sets_sensor, set_circuits_sensor],
        schedules=[refresh_stale_graphs, refresh_stale_sets],
        resources={"project": project or ProjectResource()},
        executor=executor_from_environment(),
    )


PER_LAYER_JOB = "per_layer"


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions(load_config())


def per_layer_job() -> dg.JobDefinition:
    """The per-layer job of the configured project, reconstructable in another process (`dg.reconstructable`)."""
    return defs().resolve_job_def(PER_LAYER_JOB)

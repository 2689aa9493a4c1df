"""Dagster resources: the project configuration, with the fields a run may override."""

from __future__ import annotations

import dagster as dg

from circuitdb.config import ProjectConfig, load_config


class ProjectResource(dg.ConfigurableResource):
    """circuitdb.yaml + environment, with optional per-run overrides of store, model and device."""

    config_file: str | None = None
    """Path of a circuitdb.yaml; None reads ./circuitdb.yaml when present, else the embedded default."""
    store: str | None = None
    """Overrides `store`: the folder every asset writes to."""
    model: str | None = None
    """Overrides `model.spec`."""
    device: str | None = None
    """Overrides `model.device`: auto, cpu or cuda."""

    def load(self) -> ProjectConfig:
        overrides = {"store": self.store, "model.spec": self.model, "model.device": self.device}
        return load_config(self.config_file, overrides)

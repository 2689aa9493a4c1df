"""Dagster resources: the project resource hands every step a ready `Project` (circuitdb/project.py)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

import dagster as dg

from circuitdb.project import Project


class ProjectResource(dg.ConfigurableResource):
    """circuitdb.yaml + environment, with optional per-run overrides of store, model and device. A step gets the
    opened `Project`: on object storage its store is pulled before the step and pushed after it, also when the
    step failed (every file is whole, and a later step resumes from it: shards, checkpoints, finished layers)."""

    config_file: str | None = None
    """Path of a circuitdb.yaml; None reads ./circuitdb.yaml when present, else the embedded default."""
    store: str | None = None
    """Overrides `store`: the folder or object-store URI (s3://bucket/prefix) every asset writes to."""
    model: str | None = None
    """Overrides `model.spec`."""
    device: str | None = None
    """Overrides `model.device`: auto, cpu or cuda."""

    def open(self) -> Project:
        """The project these fields name (also for sensors and schedules, which run outside a step)."""
        return Project.open(
            self.config_file, {"store": self.store, "model.spec": self.model, "model.device": self.device}
        )

    @contextmanager
    def yield_for_execution(self, context: dg.InitResourceContext) -> Iterator[Project]:
        with self.open() as project:
            yield project


ProjectParam = dg.ResourceParam[Project]
"""How an asset, op or check asks for the opened project."""

P = ParamSpec("P")
R = TypeVar("R")


def publishes(compute: Callable[P, R]) -> Callable[P, R]:
    """Mark a step that writes the store: what it wrote is published (on object storage) before the step
    ends, so a push that fails fails the step and the run. The resource's own push after the step is too
    late for that: Dagster logs an error in a resource's teardown and lets the run succeed."""

    @functools.wraps(compute)
    def step(*args: P.args, **kwargs: P.kwargs) -> R:
        project: Project = kwargs["project"]  # Dagster passes resources by name
        try:
            result = compute(*args, **kwargs)
        except BaseException as failure:
            project.publish(failure)
            raise
        project.publish()
        return result

    return step

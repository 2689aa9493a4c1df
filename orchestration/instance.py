"""One persistent Dagster instance per store, so what `circuitdb build` runs is what the UI shows.

Its home is `$DAGSTER_HOME` when set (a shared deployment: a `dagster.yaml` there points at Postgres,
see deploy/dagster.yaml), else `<store>/.dagster` with Dagster's default SQLite storage: runs, events,
materializations with their metadata, check results and the graph partitions live beside the data
they describe, and `circuitdb ui --store DIR` serves exactly them.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import dagster as dg

from assets.attribution import graph_metadata
from assets.partitions import prompt_partitions

EFFECTIVE_CONFIG = "circuitdb.effective.yaml"
"""What `circuitdb build` writes into the store: the merged configuration it ran with, which the UI loads."""


def dagster_home(store: Path) -> Path:
    return Path(os.environ["DAGSTER_HOME"]) if os.environ.get("DAGSTER_HOME") else Path(store) / ".dagster"


def ensure_home(store: Path) -> Path:
    """The instance's home, made on first use with telemetry off (nothing here reaches the network)."""
    home = dagster_home(store)
    home.mkdir(parents=True, exist_ok=True)
    settings = home / "dagster.yaml"
    if not settings.exists():
        settings.write_text("telemetry:\n  enabled: false\n")
    return home


def project_instance(store: Path) -> dg.DagsterInstance:
    """The store's persistent instance."""
    return dg.DagsterInstance.from_config(str(ensure_home(store)))


BUILDER_TAG = "circuitdb/builder"
"""Which process runs a build's run in-process (`host:pid`), so a later build can tell it is gone."""
_UNFINISHED = (dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING)


def builder_tag() -> dict[str, str]:
    return {BUILDER_TAG: f"{socket.gethostname()}:{os.getpid()}"}


def fail_abandoned_runs(instance: dg.DagsterInstance) -> int:
    """Mark failed the unfinished runs of builds on this machine whose process is gone (killed, or stopped
    while the run database was unavailable, so the run's end was never recorded): without this they would
    show as started forever. Returns how many."""
    host = socket.gethostname()
    abandoned = 0
    for run in instance.get_runs(dg.RunsFilter(statuses=list(_UNFINISHED))):
        owner, _, pid = run.tags.get(BUILDER_TAG, "").rpartition(":")
        if owner == host and pid.isdigit() and not _alive(int(pid)):
            instance.report_run_failed(run, f"the build (process {pid}) ended before the run finished")
            abandoned += 1
    return abandoned


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def add_graph_partitions(instance: dg.DagsterInstance, keys: list[str]) -> None:
    known = set(instance.get_dynamic_partitions(prompt_partitions.name))
    new = [key for key in dict.fromkeys(keys) if key not in known]
    if new:
        instance.add_dynamic_partitions(prompt_partitions.name, new)


def record_graph(store: Path, row: dict, viewer_url: str) -> None:
    """A graph built outside a run (`circuitdb graph build`): its partition, materialized with its metadata."""
    instance = project_instance(store)
    add_graph_partitions(instance, [row["slug"]])
    event = dg.AssetMaterialization(
        asset_key="attribution_graphs",
        partition=row["slug"],
        description="built by `circuitdb graph build`",
        metadata=graph_metadata(row, viewer_url),
    )
    instance.report_runless_asset_event(event)

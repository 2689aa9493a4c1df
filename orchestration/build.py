"""Materialize the whole default pipeline in-process (what `circuitdb build` and `make demo` run), into the
store's persistent Dagster instance, so that the UI shows these runs."""

from __future__ import annotations

import dataclasses

import dagster as dg
import yaml

from assets.attribution import attribution_graphs, configured_prompts, stored_prompts
from assets.circuits import configured_sets, set_graphs_request
from assets.partitions import (
    RANGE_END,
    RANGE_START,
    project_layers,
    prompt_partitions,
    prompt_set_partitions,
    set_prompt_key,
    set_prompt_partitions,
)
from assets.resources import ProjectResource
from assets.sweeps import sweep_key
from circuitdb.circuits.prompt_sets import read_prompt_file
from circuitdb.errors import CircuitDBError, first_line
from circuitdb.project import Project
from circuitdb.store import atomic_write_bytes
from circuitdb.store.space import is_out_of_space, lacks_room, out_of_space
from orchestration.definitions import build_definitions
from orchestration.instance import (
    EFFECTIVE_CONFIG,
    add_graph_partitions,
    builder_tag,
    dagster_home,
    fail_abandoned_runs,
    project_instance,
)

QUIET_LOGS = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
"""The CLI reports progress bars and a summary itself; a failure surfaces as one CircuitDBError line."""


def build_all(project: Project) -> list[dg.AssetCheckEvaluation]:
    """Run every per-layer asset for every layer partition in one run (one forward pass over all layers),
    then one attribution graph per configured prompt. Returns every asset check's evaluation (a run
    whose step fails raises; a failed check is reported, not raised, as in Dagster).

    The merged configuration is written to `<store>/circuitdb.effective.yaml` first: every asset
    reads exactly it, and it records how the store was built.
    """
    layers = project_layers(project.config)  # validates model and layers before anything is written
    config = dataclasses.replace(project.config, store=project.store.location)
    effective = project.store.root / EFFECTIVE_CONFIG
    atomic_write_bytes(effective, yaml.safe_dump(dataclasses.asdict(config), sort_keys=False).encode())
    resource = ProjectResource(config_file=str(effective))
    defs = build_definitions(config, resource)
    per_prompt = [a for a in defs.assets or [] if a.partitions_def == prompt_partitions]
    per_set = [a for a in defs.assets or [] if a.partitions_def == prompt_set_partitions]
    per_set_prompt = [a for a in defs.assets or [] if a.partitions_def == set_prompt_partitions]
    on_demand = [a for a in defs.assets or [] if sweep_key in a.keys]  # its (k, seed) partitions: UI or CLI
    per_layer = [a for a in defs.assets or [] if a not in per_prompt + per_set + per_set_prompt + on_demand]
    for check in defs.asset_checks or []:  # each runs in the run that materializes its asset
        (per_prompt if next(iter(check.check_keys)).asset_key == attribution_graphs.key else per_layer).append(check)
    tags = {RANGE_START: str(layers[0]), RANGE_END: str(layers[-1]), **builder_tag()}
    slugs = list(configured_prompts(config))
    resources = {"project": resource}
    try:
        instance = project_instance(project.store.root)
        fail_abandoned_runs(instance)
        add_graph_partitions(instance, slugs + list(stored_prompts(project.store)))
        results = [dg.materialize(per_layer, resources=resources, tags=tags, run_config=QUIET_LOGS, instance=instance)]
        for slug in slugs:  # one run per graph: a prompt partition is its own unit of work
            results.append(
                dg.materialize(
                    per_prompt,
                    resources=resources,
                    partition_key=slug,
                    tags=builder_tag(),
                    run_config=QUIET_LOGS,
                    instance=instance,
                )
            )
        for name, file in configured_sets(config).items():  # a run of the set's graphs, then one aggregating it
            count = len(read_prompt_file(file))
            instance.add_dynamic_partitions(prompt_set_partitions.name, [name])
            instance.add_dynamic_partitions(set_prompt_partitions.name, [set_prompt_key(name, i) for i in range(count)])
            request = set_graphs_request(name, count)
            graphs_run = {"tags": request.tags | builder_tag()}
            aggregate_run = {"partition_key": name, "tags": builder_tag()}
            for assets, options in ((per_set_prompt, graphs_run), (per_set, aggregate_run)):
                results.append(
                    dg.materialize(assets, resources=resources, run_config=QUIET_LOGS, instance=instance, **options)
                )
    except Exception as failure:
        raise _reported(failure, project) from None
    return [check for result in results for check in result.get_asset_check_evaluations()]


RUN_RECORDS_HEADROOM = 1 << 20
"""Below this much free space, a run whose records (SQLite) failed to be written failed for lack of space:
SQLite often says only "disk I/O error" then."""


def _reported(failure: Exception, project: Project) -> Exception:
    """What a failed build reports: the step's own error, or the full disk that stopped the run's records."""
    cause = failure.user_exception if isinstance(failure, dg.DagsterUserCodeExecutionError) else failure
    if isinstance(cause, CircuitDBError):
        return cause
    home = dagster_home(project.store.root)
    if is_out_of_space(cause) or lacks_room(home, RUN_RECORDS_HEADROOM):
        return out_of_space(home)
    if _database_unavailable(cause):
        why = first_line(cause) or type(cause).__name__
        return CircuitDBError(
            f"the run database is unavailable ({why}): the build stopped; run it again once the "
            "database is back (finished steps are skipped, runs left unfinished are marked failed)"
        )
    return cause


def _database_unavailable(failure: BaseException) -> bool:
    """Whether a failure is the run database (PostgreSQL) refusing or dropping connections."""
    names = {type(link).__name__ for link in _chain(failure)}
    return bool(names & {"DagsterPostgresException", "OperationalError", "InterfaceError"})


def _chain(failure: BaseException) -> list[BaseException]:
    chain = [failure]
    while chain[-1].__cause__ or chain[-1].__context__:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
    return chain

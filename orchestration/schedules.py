"""Schedules: graphs are rebuilt when the transcoders they used have been retrained since."""

import dagster as dg

from assets.attribution import attribution_graphs
from assets.circuits import set_graphs, set_graphs_request, stale_sets
from assets.partitions import prompt_partitions, prompt_set_partitions
from circuitdb.circuits.prompt_sets import set_rows
from circuitdb.project import Project
from circuitdb.store.graphs import stale_graphs


@dg.schedule(
    cron_schedule="0 * * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    target=[attribution_graphs],
    description="Hourly: re-attributes every graph whose transcoders were retrained after it was built.",
)
def refresh_stale_graphs(context: dg.ScheduleEvaluationContext):
    store = Project.open().store
    known = set(context.instance.get_dynamic_partitions(prompt_partitions.name))
    # a partition is keyed by the graph's slug, or (added in the UI) by its prompt
    keys = [slug if slug in known else prompt for slug, prompt in stale_graphs(store).items()]
    keys = [key for key in keys if key in known]
    if not keys:
        return dg.SkipReason("every graph is newer than its transcoders")
    return [dg.RunRequest(partition_key=key) for key in keys]


@dg.schedule(
    cron_schedule="30 * * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    target=[set_graphs],
    description="Hourly: rebuilds, one run per prompt set, the graphs built before their transcoders were last "
    "retrained (the set's other graphs are kept); the set is aggregated again once they are rebuilt.",
)
def refresh_stale_sets(context: dg.ScheduleEvaluationContext):
    known = set(context.instance.get_dynamic_partitions(prompt_set_partitions.name))
    store = Project.open().store
    names = [name for name in stale_sets(store) if name in known]
    if not names:
        return dg.SkipReason("every prompt set's graphs are newer than their transcoders")
    return [set_graphs_request(name, set_rows(store, name).height) for name in names]

"""Schedules: graphs are rebuilt when the transcoders they used have been retrained since."""

import dagster as dg
import polars as pl

from assets.attribution import attribution_graphs
from assets.partitions import prompt_partitions
from circuitdb.project import Project
from circuitdb.store import Store, read_table


def stale_graphs(store: Store) -> dict[str, str]:
    """slug → prompt of the graphs built before the latest training of the transcoders they use."""
    graphs = read_table(store, "graphs")
    trained = read_table(store, "dictionaries").group_by("name").agg(pl.col("created_at").max().alias("trained"))
    joined = graphs.join(trained, left_on="dictionaries", right_on="name", how="inner")
    stale = joined.filter(pl.col("created_at") < pl.col("trained"))
    return dict(zip(stale["slug"], stale["prompt"], strict=True))


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

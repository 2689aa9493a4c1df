"""Sensors: new prompts become graph partitions, and runs where no graph exists yet."""

import dagster as dg

from assets.attribution import attribution_graphs, configured_prompts, stored_prompts
from assets.partitions import prompt_partitions
from circuitdb.project import Project


@dg.sensor(
    target=[attribution_graphs],
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,  # on wherever a daemon runs: `circuitdb ui`, a deployment
    description="Adds a graph partition for each new prompt of attribution.prompts / attribution.prompts_file, "
    "and requests a run only for prompts whose graph is not in the store yet.",
)
def prompts_file_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
    project = Project.open()
    known = set(context.instance.get_dynamic_partitions(prompt_partitions.name))
    new = [slug for slug in configured_prompts(project.config) if slug not in known]
    if not new:
        return dg.SkipReason("no new prompts")
    built = stored_prompts(project.store)
    return dg.SensorResult(
        run_requests=[dg.RunRequest(partition_key=slug, run_key=slug) for slug in new if slug not in built],
        dynamic_partitions_requests=[prompt_partitions.build_add_request(new)],
    )

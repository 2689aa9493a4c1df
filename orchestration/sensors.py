"""Sensors: new prompts become graph partitions, and runs where no graph exists yet."""

import dagster as dg

from assets.attribution import attribution_graphs, configured_prompts, stored_prompts
from assets.circuits import configured_sets, prompt_set_circuits
from assets.partitions import prompt_partitions, prompt_set_partitions
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


@dg.sensor(
    target=[prompt_set_circuits],
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Adds a prompt_set_circuits partition for each new file of attribution.prompt_set_files and "
    "requests its run (build the set's graphs, aggregate the set).",
)
def prompt_sets_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
    known = set(context.instance.get_dynamic_partitions(prompt_set_partitions.name))
    new = [name for name in configured_sets(Project.open().config) if name not in known]
    if not new:
        return dg.SkipReason("no new prompt sets")
    return dg.SensorResult(
        run_requests=[dg.RunRequest(partition_key=name, run_key=name) for name in new],
        dynamic_partitions_requests=[prompt_set_partitions.build_add_request(new)],
    )

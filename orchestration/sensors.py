"""Sensors: new prompts become graph partitions, and runs where no graph exists yet; new prompt set files become
set partitions and a run of their graphs; a set whose graphs are all built is aggregated."""

import dagster as dg

from assets.attribution import attribution_graphs, configured_prompts, stored_prompts
from assets.circuits import configured_sets, prompt_set_circuits, set_graphs, set_graphs_request, sets_to_aggregate
from assets.partitions import prompt_partitions, prompt_set_partitions, set_prompt_key, set_prompt_partitions
from circuitdb.circuits.prompt_sets import read_prompt_file
from circuitdb.errors import CircuitDBError
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
    target=[set_graphs],
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Adds the partitions of each new file of attribution.prompt_set_files (the set, and a set_graphs "
    "partition per prompt) and requests one run building its graphs back to back.",
)
def prompt_sets_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
    known = set(context.instance.get_dynamic_partitions(prompt_set_partitions.name))
    new = {name: file for name, file in configured_sets(Project.open().config).items() if name not in known}
    if not new:
        return dg.SkipReason("no new prompt sets")
    names, keys, requests = [], [], []
    for name, file in new.items():
        try:
            count = len(read_prompt_file(file))
        except CircuitDBError as failure:  # one bad file: said in the sensor's log, the others go on
            context.log.error(f"prompt set {name}: {failure}")
            continue
        names.append(name)
        keys += [set_prompt_key(name, position) for position in range(count)]
        requests.append(set_graphs_request(name, count, run_key=name))
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[
            prompt_set_partitions.build_add_request(names),
            set_prompt_partitions.build_add_request(keys),
        ],
    )


@dg.sensor(
    target=[prompt_set_circuits],
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Aggregates a prompt set once every graph of it is built, and again after any of them is rebuilt.",
)
def set_circuits_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
    known = set(context.instance.get_dynamic_partitions(prompt_set_partitions.name))
    due = {name: newest for name, newest in sets_to_aggregate(Project.open().store).items() if name in known}
    if not due:
        return dg.SkipReason("no prompt set has graphs newer than its aggregate")
    return dg.SensorResult(
        run_requests=[dg.RunRequest(partition_key=name, run_key=f"{name}@{newest}") for name, newest in due.items()]
    )

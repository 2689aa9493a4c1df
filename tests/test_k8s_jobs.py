"""Steps as Kubernetes jobs: the job specs dagster-k8s would submit for each asset's step, built with its own
API from deploy/k8s-executor.yaml and the assets' tags (no cluster here, so nothing is submitted)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import dagster as dg
from dagster_k8s.container_context import K8sContainerContext
from dagster_k8s.job import construct_dagster_k8s_job, get_user_defined_k8s_config

from circuitdb.config import load_config
from orchestration.definitions import build_definitions
from orchestration.executors import k8s_executor_settings

REPO = Path(__file__).resolve().parents[1]
SETTINGS = REPO / "deploy" / "k8s-executor.yaml"
STORE = "s3://circuitdb/store"
HELM_RUN_LAUNCHER = SimpleNamespace(  # what the chart's K8sRunLauncher (deploy/values.yaml) hands every step job
    job_image=None,
    dagster_home="/opt/dagster/dagster_home",
    instance_config_map="circuitdb-dagster-instance",
    postgres_password_secret="dagster-postgresql-secret",
)
MODEL_STEPS = {
    "activations",
    "dictionaries_layer",
    "feature_stats_layer",
    "explanations_layer",
    "sweep",
    "attribution_graphs",
    "set_graphs",
    "cross_layer_transcoder",
}
"""Ops that run the model: one step each (per layer for the per-layer ones)."""


def _step_job(settings: dict, op: dg.OpDefinition) -> dict:
    """What K8sStepHandler.launch_step builds for this asset's step: the executor's container context
    merged with the step's `dagster-k8s/config` tag, then dagster-k8s' own job constructor."""
    executor_context = K8sContainerContext(
        image_pull_policy=settings["image_pull_policy"],
        env_vars=settings["env_vars"],
        env_secrets=settings["env_secrets"],
        namespace=settings["job_namespace"],
    )
    step_context = executor_context.merge(K8sContainerContext(run_k8s_config=get_user_defined_k8s_config(op.tags)))
    job = construct_dagster_k8s_job(
        job_config=step_context.get_k8s_job_config(settings["job_image"], HELM_RUN_LAUNCHER),
        args=["dagster", "api", "execute_step"],
        job_name=f"dagster-step-{op.name}".replace("_", "-"),
        pod_name=f"dagster-step-{op.name}".replace("_", "-"),
        component="step_worker",
        user_defined_k8s_config=step_context.run_k8s_config,
    )
    return job.to_dict()


def test_each_step_is_a_job_with_the_image_the_store_and_a_gpu_where_it_runs_a_model(
    llama_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    project = tmp_path / "circuitdb.yaml"
    project.write_text(f"model:\n  spec: {llama_dir}\nclt:\n  enabled: true\n")
    settings = k8s_executor_settings(SETTINGS)
    for name in settings["env_vars"]:  # what the run worker's environment holds in the cluster
        monkeypatch.setenv(name, f"value-of-{name}")
    monkeypatch.setenv("CIRCUITDB_EXECUTOR", str(SETTINGS))
    monkeypatch.setenv("CIRCUITDB_STORE", STORE)
    monkeypatch.setenv("CIRCUITDB_CONFIG", str(project))
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://minio.circuitdb.svc:9000")
    config = load_config()
    assert config.store == STORE
    defs = build_definitions(config)
    assert defs.executor.name == "k8s"  # the deployment's choice reached the Definitions
    names = set()
    for op in (op for asset in defs.assets for op in asset.node_def.iterate_op_defs()):
        names.add(op.name)
        spec = _step_job(settings, op)
        assert spec["metadata"]["labels"]["app.kubernetes.io/component"] == "step_worker"
        (container,) = spec["spec"]["template"]["spec"]["containers"]
        assert container["image"] == settings["job_image"]
        env = {variable["name"]: variable.get("value") for variable in container["env"]}
        assert env["DAGSTER_HOME"] == HELM_RUN_LAUNCHER.dagster_home  # the instance: PostgreSQL, from the chart
        assert env["CIRCUITDB_STORE"] == STORE and env["AWS_ENDPOINT_URL"] == "http://minio.circuitdb.svc:9000"
        assert [source["secret_ref"]["name"] for source in container["env_from"]] == settings["env_secrets"]
        limits = (container.get("resources") or {}).get("limits") or {}
        expected = {"nvidia.com/gpu": "1"} if op.name in MODEL_STEPS else {}
        assert limits == expected, op.name
        assert (op.pool == "gpu") == (op.name in MODEL_STEPS)
    assert MODEL_STEPS < names


def test_a_bad_executor_setting_is_one_error(llama_dir: Path, tmp_path: Path, monkeypatch, cli) -> None:
    (tmp_path / "executor.yaml").write_text("not: [the executor")
    monkeypatch.setenv("CIRCUITDB_EXECUTOR", str(tmp_path / "executor.yaml"))
    code, _, err = cli("build", "--model", str(llama_dir), "--store", str(tmp_path / "store"))
    assert code == 1 and err.strip().splitlines()[-1].startswith("error: CIRCUITDB_EXECUTOR=")

"""Where a run's steps execute, chosen by the deployment (`CIRCUITDB_EXECUTOR`), not by the code.

- unset: Dagster's default (steps in subprocesses of the run worker; `circuitdb build` runs in-process);
- `in_process`: every step in the run worker's process (one model load for all layers);
- `multiprocess`: each step in its own process on the run worker's machine, at most `CIRCUITDB_MAX_STEPS` at
  once (model-running steps also wait for a slot of the `gpu` pool, see deploy/dagster.yaml);
- a path to a YAML file of `k8s_job_executor` settings (deploy/k8s-executor.yaml): each step a Kubernetes job,
  model-running steps with one GPU each (`assets.partitions.GPU_POD`), the store on S3.
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
import yaml

from circuitdb.errors import CircuitDBError

EXECUTOR_ENV = "CIRCUITDB_EXECUTOR"


def k8s_executor_settings(path: Path) -> dict:
    """The `k8s_job_executor` settings a deployment file holds (its `execution: config:` block)."""
    try:
        return yaml.safe_load(Path(path).read_text())["execution"]["config"]
    except (OSError, KeyError, TypeError, yaml.YAMLError) as exc:
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())  # YAML errors span several lines
        raise CircuitDBError(f"{EXECUTOR_ENV}={path}: not a k8s_job_executor settings file ({reason})") from None


def executor_from_environment() -> dg.ExecutorDefinition | None:
    choice = os.environ.get(EXECUTOR_ENV, "")
    if not choice:
        return None
    if choice == "in_process":
        return dg.in_process_executor
    if choice == "multiprocess":
        return dg.multiprocess_executor.configured({"max_concurrent": int(os.environ.get("CIRCUITDB_MAX_STEPS", "0"))})
    from dagster_k8s import k8s_job_executor

    return k8s_job_executor.configured(k8s_executor_settings(Path(choice)))

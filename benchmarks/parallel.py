"""Per-layer dictionary steps: Dagster's multiprocess executor vs in-process, on the embedded model.

Prints one JSON line. Harvests `--layers` layers once, then trains their transcoders twice through the
`per_layer` job (one step per layer): all steps in one process, then each in its own process with at most
`--pool` of them at once (the instance's `gpu` pool limit). Reports both times, their ratio, and the most
layer steps seen running at once (which must not exceed the pool). On 2 CPU cores expect a ratio near 1:
the steps share the cores, and each process loads the model itself.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

# benchmarks/query.py would shadow the `query` package when this runs as a script
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]

import dagster as dg  # noqa: E402

from circuitdb.corpus import store_corpus, tokenize_corpus  # noqa: E402
from circuitdb.harvest import harvest_layers  # noqa: E402
from circuitdb.project import Project  # noqa: E402
from orchestration.definitions import per_layer_job  # noqa: E402

LAYER_STEP = "dictionaries.dictionaries_layer["


def _most_at_once(instance: dg.DagsterInstance, run_id: str) -> int:
    """The most layer steps running at the same time, from the run's STEP_START / STEP_SUCCESS events."""
    changes = []
    for record in instance.all_logs(run_id):
        event = record.dagster_event
        if event is not None and (event.step_key or "").startswith(LAYER_STEP):
            if event.event_type == dg.DagsterEventType.STEP_START:
                changes.append((record.timestamp, 1))
            elif event.event_type in (dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE):
                changes.append((record.timestamp, -1))
    running = most = 0
    for _, change in sorted(changes):
        running += change
        most = max(most, running)
    return most


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", default="3,9,15,21", help="comma-separated layers, one step each")
    parser.add_argument("--tokens", type=int, default=16_384)
    parser.add_argument("--pool", type=int, default=2, help="gpu pool limit: layer steps at once")
    args = parser.parse_args()
    layers = [int(layer) for layer in args.layers.split(",")]

    work = Path(tempfile.mkdtemp(prefix="circuitdb-bench-parallel-"))
    try:
        config_file = work / "circuitdb.yaml"
        config_file.write_text(
            f"store: {work / 'store'}\nmodel:\n  device: cpu\ncorpus:\n  max_tokens: {args.tokens}\n"
            f"harvest:\n  layers: {layers}\n"
        )
        project = Project.open(config_file)
        config, lm, store = project.config, project.model, project.store
        corpus = tokenize_corpus(lm, config.corpus)
        store_corpus(store, corpus, lm.name, config.corpus.seed)
        harvest_layers(store, lm, corpus, layers, config.harvest, progress=False)
        home = work / "dagster_home"
        home.mkdir()
        (home / "dagster.yaml").write_text(
            f"concurrency:\n  pools:\n    default_limit: {args.pool}\ntelemetry:\n  enabled: false\n"
        )
        instance = dg.DagsterInstance.from_config(str(home))
        os.environ["CIRCUITDB_CONFIG"] = str(config_file)
        tags = {
            "dagster/asset_partition_range_start": str(layers[0]),
            "dagster/asset_partition_range_end": str(layers[-1]),
        }
        seconds, at_once = {}, {}
        for executor in ("in_process", "multiprocess"):
            shutil.rmtree(store.root / ".finished" / "dictionaries", ignore_errors=True)  # train for real
            os.environ["CIRCUITDB_EXECUTOR"] = executor
            started = time.perf_counter()
            with dg.execute_job(
                dg.reconstructable(per_layer_job), instance, tags=tags, asset_selection=[dg.AssetKey("dictionaries")]
            ) as result:
                assert result.success, f"{executor} run failed"
                run_id = result.run_id
            seconds[executor] = time.perf_counter() - started
            at_once[executor] = _most_at_once(instance, run_id)
        print(
            json.dumps(
                {
                    "layers": layers,
                    "tokens": corpus.blocks.numel(),
                    "pool_limit": args.pool,
                    "in_process_s": round(seconds["in_process"], 1),
                    "multiprocess_s": round(seconds["multiprocess"], 1),
                    "speedup": round(seconds["in_process"] / seconds["multiprocess"], 3),
                    "most_steps_at_once_in_process": at_once["in_process"],
                    "most_steps_at_once_multiprocess": at_once["multiprocess"],
                }
            )
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

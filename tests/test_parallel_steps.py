"""Per-layer steps: one step per layer, run in parallel by Dagster's multiprocess executor within the `gpu`
pool's limit, each on a GPU of its own when a machine has several."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import pytest

from circuitdb.models import loading
from circuitdb.models.loading import claimed_device
from circuitdb.store import Store, read_table
from orchestration.definitions import per_layer_job


def test_steps_claim_distinct_gpus_and_release_them(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(loading, "GPU_LOCKS", tmp_path)
    with claimed_device("auto", gpus=3) as first, claimed_device("auto", gpus=3) as second:
        with claimed_device("auto", gpus=3) as third:
            assert {first, second, third} == {"cuda:0", "cuda:1", "cuda:2"}
        with claimed_device("auto", gpus=3) as again:
            assert again == third  # released when its step ended
    with claimed_device("cpu", gpus=3) as given, claimed_device("auto", gpus=1) as single:
        assert (given, single) == ("cpu", "auto")


def _layer_step_spans(instance: dg.DagsterInstance, run_id: str) -> list[tuple[float, float]]:
    """(launched, finished) of each layer step's process: a step holds its pool slot for all of it."""
    started: dict[str, float] = {}
    spans = []
    for record in instance.all_logs(run_id):
        event = record.dagster_event
        if event is None or not (event.step_key or "").startswith("dictionaries.dictionaries_layer["):
            continue
        if event.event_type == dg.DagsterEventType.STEP_WORKER_STARTING:  # its process is launched (slot held)
            started[event.step_key] = record.timestamp
        elif event.event_type == dg.DagsterEventType.STEP_SUCCESS:
            spans.append((started[event.step_key], record.timestamp))
    return sorted(spans)


@pytest.mark.parametrize("gpu_slots", [1, 2])
def test_layers_train_in_parallel_processes_within_the_gpu_pool(
    built_store: Path, tmp_path: Path, monkeypatch, gpu_slots: int
) -> None:
    store = Path(shutil.copytree(built_store, tmp_path / "store", ignore=shutil.ignore_patterns(".dagster")))
    before = read_table(Store(store), "dictionaries").sort("layer")
    config = tmp_path / "circuitdb.yaml"
    settings = (built_store.parent / "circuitdb.yaml").read_text().replace(str(built_store), str(store))
    assert "epochs: 2\n" in settings
    config.write_text(settings.replace("epochs: 2\n", "epochs: 150\n"))  # a new recipe: trained again, seconds each
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(
        f"concurrency:\n  pools:\n    default_limit: {gpu_slots}\ntelemetry:\n  enabled: false\n"
    )
    monkeypatch.setenv("CIRCUITDB_CONFIG", str(config))
    monkeypatch.setenv("CIRCUITDB_EXECUTOR", "multiprocess")
    instance = dg.DagsterInstance.from_config(str(home))
    tags = {"dagster/asset_partition_range_start": "0", "dagster/asset_partition_range_end": "2"}
    with dg.execute_job(
        dg.reconstructable(per_layer_job), instance, tags=tags, asset_selection=[dg.AssetKey("dictionaries")]
    ) as result:
        assert result.success
        run_id = result.run_id
    spans = _layer_step_spans(instance, run_id)
    assert len(spans) == 3
    pids = {
        record.dagster_event.pid
        for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_START)
        if record.dagster_event.step_key.startswith("dictionaries.dictionaries_layer[")
    }
    assert len(pids) == 3  # each layer in its own process
    overlapping = any(b_start < a_end for (_, a_end), (b_start, _) in zip(spans, spans[1:], strict=False))
    assert overlapping == (gpu_slots > 1)  # one slot: one step at a time; two: side by side
    after = read_table(Store(store), "dictionaries").sort("layer")
    assert after["layer"].to_list() == [0, 1, 2]
    assert (after["created_at"] > before["created_at"]).all()  # retrained, rows replaced
    assert (after["fvu_excl_pos0"] < before["fvu_excl_pos0"]).all()  # 75x the steps fit better

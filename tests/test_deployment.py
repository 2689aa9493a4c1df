"""The shared deployment: Dagster's instance in a real PostgreSQL server (deploy/dagster.yaml), written by
`circuitdb build` and by runs the daemon launches when a prompt is appended to the prompts file, and shown by
`circuitdb ui`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg
import psycopg2

from assets.attribution import configured_prompts
from circuitdb.config import load_config
from tests.servers import free_port, wait_for

REPO = Path(__file__).resolve().parents[1]
NEW_PROMPT = "The lazy dog sleeps"


def _graphql(url: str, query: str) -> dict:
    deadline = time.monotonic() + 120
    while True:  # the webserver may still be starting
        try:
            request = urllib.request.Request(
                f"{url}/graphql", json.dumps({"query": query}).encode(), {"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(request, timeout=60) as response:
                body = json.loads(response.read())
            break
        except OSError:
            assert time.monotonic() < deadline, "the webserver did not answer"
            time.sleep(1)
    assert "errors" not in body, body
    return body["data"]


def test_build_and_the_daemon_share_a_postgres_instance(
    built_store: Path, postgres: dict[str, str], tmp_path: Path, monkeypatch
) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "deploy" / "dagster.yaml", home / "dagster.yaml")
    store = shutil.copytree(built_store, tmp_path / "store", ignore=shutil.ignore_patterns(".dagster"))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("The quick brown fox\n")
    config_file = tmp_path / "circuitdb.yaml"
    config_file.write_text(
        (built_store.parent / "circuitdb.yaml").read_text().replace(str(built_store), str(store))
        + f"attribution:\n  prompts_file: {prompts}\n"
    )
    for key, value in {**postgres, "DAGSTER_HOME": str(home), "CIRCUITDB_CONFIG": str(config_file)}.items():
        monkeypatch.setenv(key, value)
    bin_dir = Path(sys.executable).parent

    built = subprocess.run([str(bin_dir / "circuitdb"), "build"], capture_output=True, text=True, env=os.environ)
    assert built.returncode == 0, built.stderr[-2000:]
    instance = dg.DagsterInstance.from_config(str(home))
    runs = instance.get_runs()
    assert runs and all(run.status == dg.DagsterRunStatus.SUCCESS for run in runs)
    (dictionaries,) = instance.fetch_materializations(dg.AssetKey("dictionaries"), limit=1).records
    assert "dagster/row_count" in dictionaries.asset_materialization.metadata
    connection = psycopg2.connect(
        host=postgres["DAGSTER_PG_HOST"], port=postgres["DAGSTER_PG_PORT"], user="postgres", dbname="dagster"
    )
    with connection, connection.cursor() as cursor:  # the runs are in PostgreSQL, not in a file beside the store
        cursor.execute("select count(*) from runs")
        assert cursor.fetchone()[0] == len(runs)
        cursor.execute("select count(*) from asset_check_executions")
        assert cursor.fetchone()[0] >= 12
    assert not (store / ".dagster").exists()

    with prompts.open("a") as handle:
        handle.write(NEW_PROMPT + "\n")
    slug = {prompt: slug for slug, prompt in configured_prompts(load_config(config_file)).items()}[NEW_PROMPT]
    port = free_port()
    ui = subprocess.Popen(  # webserver + daemon, both on the PostgreSQL instance
        [str(bin_dir / "circuitdb"), "ui", "--port", str(port)],
        env=os.environ,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def launched_run_ended() -> bool:
            runs = [run for run in instance.get_runs() if run.tags.get("dagster/partition") == slug]
            return bool(runs) and all(run.is_finished for run in runs)

        wait_for(launched_run_ended, 240, f"finished run for graph partition {slug}", ui)
        shown = _graphql(
            f"http://127.0.0.1:{port}",
            """{ runsOrError { ... on Runs { results { runId } } }
                 assetOrError(assetKey: {path: ["dictionaries"]}) { ... on Asset {
                   assetMaterializations(limit: 20) { partition } } } }""",
        )
    finally:
        ui.send_signal(signal.SIGTERM)
        assert ui.wait(timeout=60) == 0
    launched = [run for run in instance.get_runs() if run.tags.get("dagster/partition") == slug]
    assert len(launched) == 1 and launched[0].tags.get("dagster/sensor_name") == "prompts_file_sensor"
    assert launched[0].status == dg.DagsterRunStatus.SUCCESS
    records = instance.fetch_materializations(dg.AssetKey("attribution_graphs"), limit=20).records
    assert [r.run_id for r in records if r.partition_key == slug] == [launched[0].run_id]
    assert (store / "graphs" / f"{slug}.json").is_file()
    # what the UI shows is what build and the daemon did: every run, the build's layer partitions
    assert {r["runId"] for r in shown["runsOrError"]["results"]} == {run.run_id for run in instance.get_runs()}
    assert {m["partition"] for m in shown["assetOrError"]["assetMaterializations"]} == {"0", "1", "2"}

"""The shared run database (PostgreSQL) fails: under a build (a build killed mid-run, then the server down, then
back: the build ends in one clear line, the next one completes, and no run is left "started" forever), and
under `circuitdb ui` (the webserver and the daemon keep running and reconnect once it is back)."""

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
import pytest

from tests.conftest import PostgresServer
from tests.servers import free_port, wait_for

REPO = Path(__file__).resolve().parents[1]
CIRCUITDB = str(Path(sys.executable).parent / "circuitdb")


def test_a_build_that_loses_its_database_ends_clearly_and_no_run_stays_started(
    postgres_server: PostgresServer,
    llama_dir: Path,
    text_file: Path,
    tiny_dictionaries: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "deploy" / "dagster.yaml", home / "dagster.yaml")
    config = tmp_path / "circuitdb.yaml"
    config.write_text(
        f"store: {tmp_path / 'store'}\nmodel:\n  spec: {llama_dir}\n  device: cpu\n"
        f"corpus:\n  source: {text_file}\n  context: 16\n  max_tokens: 256\n" + tiny_dictionaries
    )
    settings = postgres_server.database("faults")  # its own: other tests count the runs of theirs
    for key, value in {**settings, "DAGSTER_HOME": str(home)}.items():
        monkeypatch.setenv(key, value)  # the instance reads them, and so do the builds
    env = dict(os.environ)
    instance = dg.DagsterInstance.from_config(str(home))
    build = [CIRCUITDB, "build", "--config", str(config)]

    killed = subprocess.Popen(build, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while not instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])):
        assert time.monotonic() < deadline and killed.poll() is None, "the build never started a run"
        time.sleep(0.2)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    (abandoned,) = instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))

    postgres_server.stop()
    try:
        failed = subprocess.run(build, env=env, capture_output=True, text=True, timeout=300)
    finally:
        postgres_server.start()
    last = failed.stderr.strip().splitlines()[-1]
    assert failed.returncode == 1 and last.startswith("error: the run database is unavailable"), failed.stderr[-1500:]

    again = subprocess.run(build, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "asset checks: 12 passed, 0 failed" in again.stdout, again.stderr[-2000:]
    runs = instance.get_runs()
    assert all(run.is_finished for run in runs), [(run.run_id, run.status) for run in runs]
    assert instance.get_run_by_id(abandoned.run_id).status == dg.DagsterRunStatus.FAILURE


def _answers_graphql(url: str) -> bool:
    query = json.dumps({"query": "{ runsOrError { ... on Runs { results { runId } } } }"}).encode()
    request = urllib.request.Request(f"{url}/graphql", query, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return "errors" not in json.loads(response.read())
    except OSError:
        return False


def test_the_ui_and_the_daemon_reconnect_after_the_database_restarts(
    postgres_server: PostgresServer, built_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "deploy" / "dagster.yaml", home / "dagster.yaml")
    store = shutil.copytree(built_store, tmp_path / "store", ignore=shutil.ignore_patterns(".dagster"))
    for key, value in {**postgres_server.database("reconnect"), "DAGSTER_HOME": str(home)}.items():
        monkeypatch.setenv(key, value)
    instance = dg.DagsterInstance.from_config(str(home))
    url = f"http://127.0.0.1:{free_port()}"
    ui = subprocess.Popen(
        [CIRCUITDB, "ui", "--store", str(store), "--port", url.rsplit(":", 1)[1]],
        env=dict(os.environ),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: _answers_graphql(url) and instance.get_daemon_heartbeats(), 180, "webserver and daemon", ui)
        postgres_server.stop()
        time.sleep(8)
        assert not _answers_graphql(url)  # the webserver cannot read its runs meanwhile
        postgres_server.start()
        restarted = time.time()

        def daemon_beats_again() -> bool:
            beats = instance.get_daemon_heartbeats().values()
            return bool(beats) and all(beat.timestamp > restarted for beat in beats)

        wait_for(lambda: _answers_graphql(url), 60, "webserver answer after the restart", ui)
        wait_for(daemon_beats_again, 120, "daemon heartbeats after the restart", ui)
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(timeout=60)

"""Two writers on one folder store, and readers while they write: two builds at once, one prompt's graph built
by two processes, the CLI and the viewer grouping supernodes of one graph at once, queries throughout."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from circuitdb.project import Project
from circuitdb.store import Store
from circuitdb.store.vectors import feature_vector, nearest
from query.engine import run_sql
from query.viewer.app import make_app
from tests.servers import LOCAL

CIRCUITDB = str(Path(sys.executable).parent / "circuitdb")


def _start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([CIRCUITDB, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(process: subprocess.Popen) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=600)
    return process.returncode, out, err


class Questions(threading.Thread):
    """Asks the store questions in a loop until stopped; keeps every failure."""

    def __init__(self, store: Store, sql: list[str]) -> None:
        super().__init__()
        self.store, self.sql = store, sql
        self.stop, self.failures, self.answered = threading.Event(), [], 0

    def run(self) -> None:
        while not self.stop.is_set():
            for statement in self.sql:
                try:
                    run_sql(self.store, statement)
                    self.answered += 1
                except Exception as exc:  # noqa: BLE001 (the test reports every kind)
                    self.failures.append(f"{statement}: {exc}")


@pytest.fixture
def store_copy(built_store: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(built_store, tmp_path / "store"))


def test_the_cli_and_the_viewer_grouping_one_graph_at_once_keep_every_supernode(store_copy: Path) -> None:
    store = Store(store_copy)
    slug, nodes = _graph_nodes(store)
    client = TestClient(make_app(Project.open(overrides={"store": str(store_copy)})), base_url=LOCAL)
    processes = [
        _start("graph", "supernode", slug, f"cli-{i}", *nodes[i : i + 2], "--store", str(store_copy)) for i in range(3)
    ]
    answers = []

    def post(i: int) -> None:
        body = {"name": f"viewer-{i}", "node_ids": nodes[i : i + 3]}
        answers.append(client.post(f"/api/graph/{slug}/supernodes", json=body).status_code)

    threads = [threading.Thread(target=post, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == [200] * 6
    for process in processes:
        code, _, err = _finish(process)
        assert code == 0, err
    saved = client.get(f"/api/graph/{slug}").json()["supernodes"]
    assert sorted(s["name"] for s in saved) == sorted(
        [f"cli-{i}" for i in range(3)] + [f"viewer-{i}" for i in range(6)]
    )


def test_one_prompt_built_by_two_processes_while_questions_are_asked(store_copy: Path, llama_dir: Path) -> None:
    store = Store(store_copy)
    config = store_copy / "circuitdb.effective.yaml"
    questions = Questions(store, ["select count(*) from graph_nodes", "select slug, n_nodes from graphs"])
    questions.start()
    prompt = "The quick brown fox jumps over"
    builds = [_start("graph", "build", prompt, "--config", str(config), "--store", str(store_copy)) for _ in range(2)]
    results = [_finish(build) for build in builds]
    questions.stop.set()
    questions.join()
    assert [code for code, _, _ in results] == [0, 0], [err for _, _, err in results]
    assert questions.failures == [] and questions.answered > 0
    rows = run_sql(store, f"select count(*) from graphs where prompt = '{prompt}'").rows
    assert rows == [(1,)]
    code, out, err = _finish(_start("check", "--store", str(store_copy)))
    assert code == 0 and "0 damaged or missing, 0 without a checksum" in out + err, out + err


def _graph_nodes(store: Store) -> tuple[str, list[str]]:
    slug = run_sql(store, "select slug from graphs order by slug limit 1").rows[0][0]
    nodes = run_sql(store, f"select node_id from graph_nodes where slug = '{slug}' order by node_id limit 8").rows
    return slug, [node for (node,) in nodes]


def test_two_builds_on_one_folder_at_once_while_questions_are_asked(store_copy: Path, built_store: Path) -> None:
    """Both rebuild a stored pipeline with a changed recipe (every kind of write: tables, shards' finished
    markers, weights, vectors, graphs) while another thread asks questions of every kind of table."""
    config = store_copy.parent / "circuitdb.yaml"
    recipe = (built_store.parent / "circuitdb.yaml").read_text().replace(str(built_store), str(store_copy))
    config.write_text(recipe.replace("epochs: 2", "epochs: 3"))
    store = Store(store_copy)
    questions = Questions(
        store,
        [
            "select count(*) from features",
            "select layer, fvu from dictionaries",
            "select count(*) from exemplars",
            "select count(*) from graph_nodes",
            "select count(*) from activation_shards",
        ],
    )
    questions.start()
    builds = [_start("build", "--config", str(config)) for _ in range(2)]
    results = [_finish(build) for build in builds]
    questions.stop.set()
    questions.join()
    assert [code for code, _, _ in results] == [0, 0], [err[-2000:] for _, _, err in results]
    assert questions.failures == [] and questions.answered > 0, questions.failures[:3]
    code, out, err = _finish(_start("check", "--config", str(config)))
    assert code == 0 and "0 damaged or missing, 0 without a checksum" in out + err, out + err
    assert run_sql(store, "select count(*) from features").rows == [(3 * 64,)]
    assert run_sql(store, "select count(*) from dictionaries").rows == [(3,)]
    assert nearest(store, feature_vector(store, "plt/1/0"), 4).height == 4

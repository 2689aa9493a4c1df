"""`circuitdb serve`: its JSON API against the tables, and its pages in a real browser (Debian's chromium
driven by Playwright): no console errors, every graph node drawn, a click shows the node's panel, the
feature page shows the store's exemplars, and no request leaves the machine."""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import polars as pl
import pytest
from starlette.testclient import TestClient

from circuitdb.project import Project
from circuitdb.store import Store, read_table
from query.viewer.app import make_app
from tests.servers import LOCAL

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def _project(store: Path, llama_dir: Path) -> Project:
    return Project.open(overrides={"store": str(store), "model.spec": str(llama_dir), "model.device": "cpu"})


@pytest.fixture(scope="module")
def client(built_store: Path) -> TestClient:
    return TestClient(make_app(Project.open(overrides={"store": str(built_store)})), base_url=LOCAL)


def test_the_api_returns_what_the_tables_hold(client: TestClient, built_store: Path) -> None:
    store = Store(built_store)
    graphs = read_table(store, "graphs")
    index = client.get("/api/index").json()
    assert sorted(g["slug"] for g in index["graphs"]) == sorted(graphs["slug"])
    assert [d["layer"] for d in index["dictionaries"]] == [0, 1, 2]
    slug = graphs["slug"][0]
    document = client.get(f"/api/graph/{slug}", params={"max_edges": 10}).json()
    nodes = read_table(store, "graph_nodes").filter(pl.col("slug") == slug)
    edges = read_table(store, "graph_edges").filter(pl.col("slug") == slug)
    assert sorted(n["node_id"] for n in document["nodes"]) == sorted(nodes["node_id"])
    strongest = edges.sort(pl.col("weight").abs(), descending=True).head(10)
    assert [e[2] for e in document["edges"]] == pytest.approx(strongest["weight"].to_list())
    assert document["n_edges"] == edges.height
    feature = read_table(store, "features").filter(~pl.col("dead"))["feature_id"][0]
    page = client.get(f"/api/feature/{feature}").json()
    assert page["feature_id"] == feature and page["exemplars"]
    assert client.get("/api/feature/plt/1/99999").status_code == 404
    assert client.get("/api/graph/no-such-graph").json()["error"].startswith("unknown graph")


def test_texts_run_through_the_model(built_store: Path, llama_dir: Path, cli) -> None:
    """'Try your text' gives the feature's value on every token (the same as text search's per-token rows);
    the index's text search ranks as `circuitdb search text` does."""
    client = TestClient(make_app(_project(built_store, llama_dir)), base_url=LOCAL)
    text = "The quick brown fox jumps over the lazy dog"
    code, out, _ = cli(
        "search",
        "text",
        text,
        "--per-token",
        "--k",
        "3",
        "-f",
        "json",
        "--store",
        str(built_store),
        "--config",
        str(built_store.parent / "circuitdb.yaml"),
    )
    strongest = json.loads(out)[0]
    result = client.post(f"/api/feature/{strongest['feature_id']}/text", json={"text": text}).json()
    assert result["tokens"][strongest["position"]] == strongest["token"]
    assert result["values"][strongest["position"]] == pytest.approx(strongest["activation"], rel=1e-5)
    assert result["values"][0] == 0.0 and len(result["tokens"]) == len(result["values"])
    code, out, _ = cli("search", "text", text, "-f", "json", "--config", str(built_store.parent / "circuitdb.yaml"))
    assert [r["feature_id"] for r in client.post("/api/search", json={"text": text}).json()["features"]] == [
        r["feature_id"] for r in json.loads(out)
    ]
    assert client.post("/api/feature/plt/1/99999/text", json={"text": text}).status_code == 400
    assert client.post("/api/search", json={"text": "  "}).json()["error"].startswith("empty text")


def test_model_requests_are_bounded(built_store: Path, llama_dir: Path) -> None:
    """Running the model takes a POST with a JSON body (a page of another site cannot send one), a text of at
    most MAX_TEXT_TOKENS tokens, and a place in a short queue."""
    import asyncio

    from query.viewer.model_queue import MAX_TEXT_CHARS, MAX_TEXT_TOKENS, ModelQueue, Refused

    client = TestClient(make_app(_project(built_store, llama_dir)), base_url=LOCAL)
    assert client.get("/api/search", params={"text": "a dog"}).status_code == 405
    form = client.post("/api/search", content="text=a dog", headers={"content-type": "text/plain"})
    assert form.status_code == 400 and "application/json" in form.json()["error"]
    too_long = client.post("/api/search", json={"text": "x" * (MAX_TEXT_CHARS + 1)})
    assert too_long.status_code == 413 and "characters" in too_long.json()["error"]
    many_tokens = " ".join(["dog"] * (MAX_TEXT_TOKENS + 1))
    refused = client.post("/api/feature/plt/1/0/text", json={"text": many_tokens})
    assert refused.status_code == 413 and f"at most {MAX_TEXT_TOKENS}" in refused.json()["error"]

    async def crowd() -> list[str]:
        queue = ModelQueue(waiting=2)
        outcomes = await asyncio.gather(*(queue.run(time.sleep, 0.2) for _ in range(5)), return_exceptions=True)
        return ["ran" if o is None else f"{o.status}" for o in outcomes if o is None or isinstance(o, Refused)]

    assert sorted(asyncio.run(crowd())) == ["429", "429", "ran", "ran", "ran"]


def test_bad_graph_requests_get_a_message(client: TestClient) -> None:
    slug = client.get("/api/index").json()["graphs"][0]["slug"]
    for bad in ("abc", "1e3", "-1", "0", "99999999999"):
        answer = client.get(f"/api/graph/{slug}", params={"max_edges": bad})
        assert answer.status_code == 400 and answer.json()["error"].startswith("max_edges must be"), bad


@pytest.fixture(scope="module")
def viewed(built_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the built store for the browser tests (the viewer writes supernodes into it)."""
    return Path(shutil.copytree(built_store, tmp_path_factory.mktemp("viewed") / "store"))


@pytest.fixture(scope="module")
def served(viewed: Path, llama_dir: Path):
    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            make_app(_project(viewed, llama_dir)),
            host="127.0.0.1",
            port=port,
            log_level="warning",
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def _two_sweep_points(store: Store) -> None:
    """Two seeds of one sweep point, their features explained (detection 0.6 and 0.7) but not fuzzed."""
    from datetime import UTC, datetime

    from circuitdb.store import write_partition

    for seed, detection in ((0, 0.6), (1, 0.7)):
        row = {"dictionary": "plt", "layer": 1, "kind": "plt", "skip": False, "n_latents": 64, "k": 4, "seed": seed}
        row |= {"fvu": 0.5, "fvu_excl_pos0": 0.4, "l0": 4.0, "dead_frac": 0.1, "delta_ce": 0.2, "kl": 0.1}
        row |= {"explained_features": 3, "detection_acc": detection, "fuzzing_acc": None}
        write_partition(store, "sweeps", f"point-{seed}", pl.DataFrame([row | {"created_at": datetime.now(UTC)}]))


@pytest.mark.skipif(not Path(CHROMIUM).exists() and not os.environ.get("CI"), reason="needs Debian's chromium")
def test_the_pages_in_a_browser(served: str, viewed: Path, tmp_path_factory: pytest.TempPathFactory, cli) -> None:
    from playwright.sync_api import sync_playwright

    store = Store(viewed)
    features = read_table(store, "graph_nodes").filter(pl.col("kind") == "feature")
    slug = features.group_by("slug").len().sort("len", descending=True)["slug"][0]  # the graph with most features
    nodes = read_table(store, "graph_nodes").filter(pl.col("slug") == slug)
    shots = tmp_path_factory.mktemp("viewer-screenshots")
    errors, outside = [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("request", lambda request: outside.append(request.url) if not request.url.startswith(served) else None)

        page.goto(f"{served}/graph/{slug}")
        page.wait_for_selector("#plot[data-ready='1']", timeout=60_000)
        assert int(page.get_attribute("#plot", "data-nodes")) == nodes.height
        feature_index = page.evaluate(
            "() => { const gd = document.getElementById('plot');"
            " return gd.data.find(t => t.name === 'nodes').text.findIndex(t => t.startsWith('plt/')); }"
        )
        page.evaluate(
            f"() => document.getElementById('plot').emit('plotly_click', {{points: [{{customdata: {feature_index}}}]}})"
        )
        assert feature_index >= 0
        page.wait_for_function("() => document.querySelector('#card h3')", timeout=30_000)
        shown = page.inner_text("#card h3")
        ordered = sorted(nodes.rows(named=True), key=lambda n: n["node_id"])  # the API's order
        assert shown == ordered[feature_index]["feature_id"]
        page.screenshot(path=str(shots / "graph.png"))

        grouped = [ordered[feature_index]["node_id"], ordered[feature_index - 1 or 1]["node_id"]]
        for node_id in grouped:  # click each node, add it to the group
            index = [n["node_id"] for n in ordered].index(node_id)
            page.evaluate(
                f"() => document.getElementById('plot').emit('plotly_click', {{points: [{{customdata: {index}}}]}})"
            )
            page.wait_for_selector(f"#node[data-node='{node_id}']")
            page.click("#select")
        page.fill("#group-name", "my circuit")
        page.click("#save-group")
        page.wait_for_selector(".supernode")
        page.reload()
        page.wait_for_selector("#plot[data-ready='1']", timeout=60_000)
        assert page.inner_text(".supernode") == f"my circuit: {', '.join(sorted(grouped))}"

        feature = ordered[feature_index]["feature_id"]
        page.goto(f"{served}/feature/{feature}")
        page.wait_for_selector("#feature-page[data-ready='1']", timeout=30_000)
        stored = read_table(store, "exemplars").filter(pl.col("feature_id") == feature)
        expected = stored.filter((pl.col("kind") == "top") & (pl.col("rank") < 8)).height
        expected += stored.filter((pl.col("kind") == "quantile") & (pl.col("rank") == 0)).height
        assert page.locator("#exemplars .exemplar").count() == expected > 0
        page.fill("#text", "The quick brown fox")
        page.click("#run")
        page.wait_for_selector("#text-result span", timeout=60_000)
        assert page.locator("#text-result span").count() == 5  # BOS + four words of the tiny tokenizer
        assert page.locator("a.graph").count() >= 1  # the graph it was clicked in
        page.screenshot(path=str(shots / "feature.png"), full_page=True)

        _two_sweep_points(store)
        page.goto(f"{served}/")
        page.wait_for_selector("#graphs tr >> nth=1", timeout=30_000)
        assert page.locator("#graphs a").count() == read_table(store, "graphs").height
        page.wait_for_selector("#sweep-ce .main-svg", timeout=30_000)
        assert page.locator("#sweep-fvu .main-svg").count() >= 1
        point = page.inner_text("#sweep-points tr >> nth=1").split("\t")
        assert point[:3] == ["plt layer 1", "4", "2"] and point[-2:] == ["0.650 ± 0.635", ""]  # t(1 df) = 12.706
        page.screenshot(path=str(shots / "index.png"), full_page=True)
        browser.close()
    assert errors == [] and outside == []
    code, out, _ = cli("graph", "show", slug, "--store", str(viewed))
    assert code == 0 and f"supernode my circuit: {', '.join(sorted(grouped))}" in out
    (row,) = read_table(store, "graph_annotations").rows(named=True)
    assert row["slug"] == slug and row["node_ids"] == sorted(grouped)


@pytest.mark.skipif(not Path(CHROMIUM).exists() and not os.environ.get("CI"), reason="needs Debian's chromium")
def test_the_html_export_opens_from_disk_offline(built_store: Path, tmp_path: Path, cli) -> None:
    from playwright.sync_api import sync_playwright

    store = Store(built_store)
    slug = read_table(store, "graphs")["slug"][0]
    nodes = read_table(store, "graph_nodes").filter(pl.col("slug") == slug)
    page_file = tmp_path / "graph.html"
    code, _, err = cli("graph", "export", slug, "--html", str(page_file), "--store", str(built_store))
    assert code == 0, err
    errors, requests = [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("request", lambda request: requests.append(request.url))
        page.goto(page_file.as_uri())
        page.wait_for_selector("#plot[data-ready='1']", timeout=60_000)
        assert int(page.get_attribute("#plot", "data-nodes")) == nodes.height
        browser.close()
    assert errors == [] and [url for url in requests if not url.startswith(("file://", "data:"))] == []


def test_only_json_posts_write(client: TestClient, built_store: Path) -> None:
    """A form or text/plain POST (what another site's page can send without asking) writes nothing."""
    slug = read_table(Store(built_store), "graphs")["slug"][0]
    body = '{"name": "x", "node_ids": ["a", "b"]}'
    response = client.post(f"/api/graph/{slug}/supernodes", content=body, headers={"content-type": "text/plain"})
    assert response.status_code == 400 and "application/json" in response.json()["error"]
    assert "graph_annotations" not in Store(built_store).table_names()

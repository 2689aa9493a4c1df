"""`circuitdb serve`: its JSON API against the tables, and its pages in a real browser (Debian's chromium
driven by Playwright): no console errors, every graph node drawn, a click shows the node's panel, the
feature page shows the store's exemplars, and no request leaves the machine."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import polars as pl
import pytest
from starlette.testclient import TestClient

from circuitdb.circuits.pruned import PrunedGraph
from circuitdb.project import Project
from circuitdb.store import Store, read_table
from query.graph_view import annotations, subgraph_scores
from query.questions import node_edges
from query.viewer.app import make_app
from tests.servers import LOCAL

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
NODES_TRACE = (
    "() => { const nodes = [...document.querySelectorAll('#plot .node')];"
    " return {ids: nodes.map(n => n.dataset.id), text: nodes.map(n => n.dataset.label)}; }"
)
"""The drawn nodes' ids and labels, in drawing order."""


def _overlapping_nodes(page) -> int:
    """Pairs of drawn node markers whose boxes overlap, as the browser laid out plotly's SVG points."""
    return page.evaluate("() => drawnOverlaps(document.getElementById('plot'))")


def _click(page, node_id: str) -> None:
    """A click on the node's marker."""
    page.evaluate(
        'id => document.querySelector(`#plot .node[data-id="${CSS.escape(id)}"]`)'
        ".dispatchEvent(new MouseEvent('click', {bubbles: true}))",
        node_id,
    )


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
    top = nodes.sort("activation", descending=True).filter(pl.col("kind") == "logit")["node_id"][0]
    reading = PrunedGraph(nodes.sort("node_id"), edges).for_logit(top)  # checked against dense matrices elsewhere
    best = sorted(reading.edge_scores, reverse=True)[:10]
    assert document["logit"] == top and [e[3] for e in document["edges"]] == pytest.approx(best)
    weights = {(s, t): w for s, t, w in edges.select("source", "target", "weight").rows()}
    assert [e[2] for e in document["edges"]] == pytest.approx([weights[(e[0], e[1])] for e in document["edges"]])
    assert document["n_edges"] == edges.height
    other = nodes.filter((pl.col("kind") == "logit") & (pl.col("node_id") != top))["node_id"]
    if len(other):  # another logit: its own influence
        again = client.get(f"/api/graph/{slug}", params={"logit": other[0]}).json()
        assert again["logit"] == other[0] and again["nodes"] != document["nodes"]
    bad = client.get(f"/api/graph/{slug}", params={"logit": "nope"})
    assert bad.status_code == 400 and "not one of the graph's logits" in bad.json()["error"]
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
    from query.viewer.app import serve_in_background

    url, server = serve_in_background(_project(viewed, llama_dir))
    yield url
    server.should_exit = True


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
def test_the_pages_in_a_browser(
    served: str, viewed: Path, built_store: Path, tmp_path_factory: pytest.TempPathFactory, cli
) -> None:
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
        assert _overlapping_nodes(page) == 0
        drawn = page.evaluate(NODES_TRACE)
        assert set(drawn["ids"]) <= set(nodes["node_id"]) and drawn["ids"]
        top = nodes.filter(pl.col("kind") == "logit").sort("activation", descending=True).row(0, named=True)
        assert f"{100 * top['activation']:.1f}%" in drawn["text"][drawn["ids"].index(top["node_id"])]
        features = nodes.filter(pl.col("kind") == "feature").sort("node_id")
        node_id, feature = features["node_id"][0], features["feature_id"][0]
        _click(page, node_id)
        page.wait_for_function("() => document.querySelector('#card h3')", timeout=30_000)
        assert page.inner_text("#card h3") == feature
        page.wait_for_selector("#incoming li a")
        stored = node_edges(store, slug, None, node_id, 20)
        shown = page.locator("#incoming li span").all_inner_texts()
        assert [float(w) for w in shown] == pytest.approx([row[3] for row in stored.rows], abs=6e-4)
        page.screenshot(path=str(shots / "graph.png"))

        page.click("#pin")  # pinned: the subgraph's scores, computed on the server
        page.wait_for_selector("#sub-replacement")
        scores = json.loads(page.get_attribute("#scores", "data-scores"))
        assert scores == pytest.approx(subgraph_scores(store, slug, [node_id]))

        page.fill("#generate", "3")  # ablate the pinned feature: the same as `circuitdb steer` there
        page.click("#intervene")
        page.wait_for_selector("#changes", timeout=60_000)
        result = json.loads(page.get_attribute("#intervention", "data-result"))
        position = str(features["position"][0])
        prompt = read_table(store, "graphs").filter(pl.col("slug") == slug)["prompt"][0]
        code, out, err = cli(
            "steer",
            prompt,
            "--feature",
            feature,
            "--positions",
            position,
            "--freeze-attention",
            "--generate",
            "3",
            "-f",
            "json",
            "--store",
            str(viewed),
            "--config",
            str(built_store.parent / "circuitdb.yaml"),
        )
        assert code == 0, err
        steered = json.loads(out)
        assert result["generated"] == steered["generated"]
        expected = json.loads(steered["logit_changes"])
        assert [c["token"] for c in result["changes"]] == [c["token"] for c in expected]
        numbers = [[c[key] for key in ("p_before", "p_after", "change")] for c in result["changes"]]
        assert numbers == [pytest.approx([c[key] for key in ("p_before", "p_after", "change")]) for c in expected]
        runs = read_table(store, "interventions").filter(pl.col("slug") == slug)
        assert runs.height == 1 and runs["node_positions"][0].to_list() == [[int(position)]]

        grouped = sorted([node_id, top["node_id"]])
        _click(page, top["node_id"])
        page.wait_for_selector(f"#node[data-node='{top['node_id']}']")
        page.click("#pin")
        page.fill("#group-name", "my circuit")
        page.click("#save-group")
        page.wait_for_function("() => document.querySelector('#groups .supernode')")
        assert "group:my circuit" in page.evaluate(NODES_TRACE)["ids"]  # drawn as one node
        page.reload()
        page.wait_for_selector("#plot[data-ready='1']", timeout=60_000)
        assert page.inner_text("#groups .supernode") == "my circuit: 2 nodes"
        _click(page, "group:my circuit")
        page.wait_for_selector("#group-card")
        page.fill("#rename-to", "renamed")
        page.click("#rename")
        page.wait_for_selector("#group-card[data-group='renamed']")
        assert "group:renamed" in page.evaluate(NODES_TRACE)["ids"]
        assert annotations(store, slug, "supernode") == [{"name": "renamed", "node_ids": grouped}]

        _click(page, "group:renamed")
        page.wait_for_selector("#group-card")
        page.click("#delete-group")
        page.wait_for_function("() => !document.querySelector('#groups .supernode')")
        assert annotations(store, slug, "supernode") == []
        assert "group:renamed" not in page.evaluate(NODES_TRACE)["ids"]

        _click(page, node_id)
        page.wait_for_selector(f"#node[data-node='{node_id}']")
        page.click("#pin")
        page.wait_for_selector("#sub-replacement")
        page.evaluate(
            "() => { const s = document.getElementById('nodes'); s.value = '0.5';"
            " s.dispatchEvent(new Event('input')); }"
        )
        state = json.loads(page.get_attribute("#plot", "data-state"))
        shared = browser.new_page(viewport={"width": 1400, "height": 900})  # the link, opened afresh
        shared.goto(page.url)
        shared.wait_for_selector("#plot[data-ready='1']", timeout=60_000)
        assert json.loads(shared.get_attribute("#plot", "data-state")) == state
        assert state["pins"] == [node_id] and state["sel"] == node_id and state["nodes"] == 0.5
        assert shared.evaluate(NODES_TRACE) == page.evaluate(NODES_TRACE)
        shared.close()

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


def test_requests_to_other_names_and_writes_without_the_token_are_refused(built_store: Path) -> None:
    """DNS rebinding: a page of another name pointed at 127.0.0.1 is refused; bound beyond loopback, every
    write needs the token `serve` printed; unknown graphs and features are pages that say so."""
    from query.viewer.access import Access

    project = Project.open(overrides={"store": str(built_store)})
    local = TestClient(make_app(project), base_url=LOCAL)
    rebound = TestClient(make_app(project), base_url="http://evil.example:8080")
    assert rebound.get("/api/index").status_code == 421 and local.get("/api/index").status_code == 200
    slug = read_table(Store(built_store), "graphs")["slug"][0]
    public = TestClient(make_app(project, Access.for_address("0.0.0.0", "s3cret")), base_url="http://10.1.2.3")
    assert public.get("/api/index").status_code == 200  # reads stay open
    body = {"node_ids": ["x"]}
    refused = public.post(f"/api/graph/{slug}/subgraph", json=body)
    assert refused.status_code == 401 and "token" in refused.json()["error"]
    allowed = public.post(f"/api/graph/{slug}/subgraph", json=body, headers={"Authorization": "Bearer s3cret"})
    assert allowed.status_code == 400 and "no node 'x'" in allowed.json()["error"]
    assert Access.for_address("0.0.0.0", None).token  # a token is made when none is given
    for path, message in (("/graph/no-such-graph", "unknown graph"), ("/feature/plt/1/99999", "")):
        answer = local.get(path)
        assert answer.status_code == 404 and "text/html" in answer.headers["content-type"], path
        assert 'id="error"' in answer.text and message in answer.text
    for params in ({"node": "x", "direction": "up"}, {"node": "x", "k": "abc"}, {"node": "x", "k": "0"}):
        assert local.get(f"/api/graph/{slug}/edges", params=params).status_code == 400, params
    steer = local.post(f"/api/graph/{slug}/intervene", json={"node_ids": [], "mode": "explode"})
    assert steer.status_code == 400 and steer.json()["error"].startswith("mode must be one of")
    assert local.post(f"/api/graph/{slug}/labels", json={"name": "a"}).status_code == 400


@pytest.mark.skipif(not Path(CHROMIUM).exists() and not os.environ.get("CI"), reason="needs Debian's chromium")
def test_two_graphs_of_one_prompt_side_by_side(served: str, viewed: Path, built_store: Path, cli) -> None:
    """The compare page marks the nodes both graphs hold: the same count as the tables give."""
    from playwright.sync_api import sync_playwright

    store = Store(viewed)
    graphs = read_table(store, "graphs")
    first = graphs.row(0, named=True)
    nodes = read_table(store, "graph_nodes", partitions=[first["slug"]])
    second_logit = nodes.filter(pl.col("kind") == "logit").sort("activation")["token"][0]
    config = str(built_store.parent / "circuitdb.yaml")
    args = ("graph", "build", first["prompt"], "--target", second_logit, "--store", str(viewed), "--config", config)
    code, _, err = cli(*args)
    assert code == 0, err
    second = read_table(store, "graphs").filter(pl.col("slug") != first["slug"])
    second = second.filter(pl.col("prompt") == first["prompt"])["slug"][0]

    def keys(slug: str) -> set[str]:
        rows = read_table(store, "graph_nodes", partitions=[slug]).filter(pl.col("kind") == "feature")
        return {f"{f}@{p}" for f, p in rows.select("feature_id", "position").rows()}

    shared = keys(first["slug"]) & keys(second)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(f"{served}/graph/{first['slug']}")
        page.wait_for_selector("#plot[data-ready='1']", timeout=60_000)
        page.click("a.compare")
        page.wait_for_selector("#compare-page[data-ready='1']", timeout=60_000)
        assert int(page.get_attribute("#compare-summary", "data-shared")) == len(shared)
        assert page.get_attribute("#compare-summary", "data-rule") == "identity"  # one dictionary set, two targets
        page.locator("#plot .node.ringed").first.click()  # a matched node of A: its match and its score
        text = page.inner_text("#match-text")
        mine, theirs = text.split(" (A) ↔ ")
        assert "identity match, score 1.000" in text and theirs.startswith(mine + " (B)"), text
        browser.close()

"""What `circuitdb build` did is what the Dagster UI shows: a tiny-model build into the store's persistent
instance, served by `circuitdb ui`, read back through Dagster's GraphQL API and in a real browser
(Debian's chromium driven by Playwright). The server is stopped by the test and must leave nothing."""

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

from assets.attribution import configured_prompts
from assets.resources import ProjectResource
from circuitdb.config import load_config
from circuitdb.project import Project
from circuitdb.store import Store, read_table
from orchestration.build import build_all
from orchestration.definitions import build_definitions
from orchestration.instance import EFFECTIVE_CONFIG, project_instance
from tests.servers import free_port

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
PROMPTS = ["The quick brown fox", "def function(argument):"]
CLI_PROMPT = "Python is a programming language"


def _graphql(url: str, query: str) -> dict:
    request = urllib.request.Request(
        f"{url}/graphql", json.dumps({"query": query}).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        body = json.loads(response.read())
    assert "errors" not in body, body
    return body["data"]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, llama_dir: Path):
    """A tiny build (3 layers, 2 configured prompts) plus one graph from the CLI, and `circuitdb ui` over it."""
    root = tmp_path_factory.mktemp("ui")
    corpus = root / "corpus.txt"
    corpus.write_text("The quick brown fox jumps over the lazy dog. Python is a programming language. " * 40)
    tiny_set = root / "tiny.csv"
    tiny_set.write_text("prompt,target,tags\nThe quick brown fox,,animal\nThe lazy dog,,animal\n")
    project = root / "circuitdb.yaml"
    project.write_text(
        f"store: {root / 'store'}\nmodel:\n  spec: {llama_dir}\n  device: cpu\n"
        f"corpus:\n  source: {corpus}\n  context: 16\n  max_tokens: 320\n  eval_fraction: 0.25\n"
        "harvest:\n  hooks: [mlp_in, mlp_out]\n  batch_size: 4\n"
        "dictionaries:\n  dictionary: {n_latents: 64, k: 4}\n  train: {batch_size: 32, epochs: 2, warmup_steps: 2}\n"
        f"  ce_eval_blocks: 2\nattribution:\n  prompts: {json.dumps(PROMPTS)}\n  node_threshold: 0.95\n"
        f"  prompt_set_files: [{tiny_set}]\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "CIRCUITDB_CONFIG")}
    env["CIRCUITDB_CONFIG"] = str(project)
    cli = str(Path(sys.executable).parent / "circuitdb")
    config = load_config(project)
    build_all(Project(config))
    built = subprocess.run([cli, "graph", "build", CLI_PROMPT, "-f", "json"], env=env, capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    port = free_port()
    server = subprocess.Popen([cli, "ui", "--port", str(port)], env=env, cwd=root, stdout=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"{url}/server_info", timeout=2)
            break
        except OSError:
            assert server.poll() is None and time.monotonic() < deadline, "the UI did not come up"
            time.sleep(0.5)
    yield url, config, json.loads(built.stdout.strip().splitlines()[-1])["slug"]
    server.send_signal(signal.SIGTERM)
    assert server.wait(timeout=60) == 0
    left = subprocess.run(["pgrep", "-f", str(Store(config.store).root)], capture_output=True, text=True).stdout.split()
    assert not left, f"processes left behind: {left}"
    assert not list(root.glob(".tmp_dagster_home_*")) and (Store(config.store).root / ".dagster").is_dir()


def test_graphql_shows_the_build(served) -> None:
    url, config, cli_slug = served
    data = _graphql(
        url,
        """{
          dictionaries: assetOrError(assetKey: {path: ["dictionaries"]}) { ... on Asset {
            assetMaterializations(limit: 20) {
              partition metadataEntries { label ... on IntMetadataEntry { intValue } }
            }
          } }
          graphs: assetNodeOrError(assetKey: {path: ["attribution_graphs"]}) { ... on AssetNode { partitionKeys } }
          validations: assetCheckExecutions(
            assetKey: {path: ["attribution_graphs"]}, checkName: "graph_validation", limit: 10
          ) { status evaluation { success } }
          graphEvents: assetOrError(assetKey: {path: ["attribution_graphs"]}) { ... on Asset {
            assetMaterializations(limit: 20) { partition }
          } }
          quality: assetNodeOrError(assetKey: {path: ["dictionaries"]}) { ... on AssetNode {
            assetChecksOrError { ... on AssetChecks { checks { name executionForLatestMaterialization {
              status evaluation { success } } } } }
          } }
          setGraphs: assetNodeOrError(assetKey: {path: ["set_graphs"]}) { ... on AssetNode { partitionKeys } }
          setGraphEvents: assetOrError(assetKey: {path: ["set_graphs"]}) { ... on Asset {
            assetMaterializations(limit: 20) { partition }
          } }
          setEvents: assetOrError(assetKey: {path: ["prompt_set_circuits"]}) { ... on Asset {
            assetMaterializations(limit: 5) {
              partition metadataEntries { label ... on IntMetadataEntry { intValue } }
            }
          } }
          assetNodes { assetKey { path } description kinds }
        }""",
    )
    events = data["dictionaries"]["assetMaterializations"]
    assert {e["partition"] for e in events} == {"0", "1", "2"}
    labels = {entry["label"]: entry.get("intValue") for entry in events[0]["metadataEntries"]}
    assert {"metrics", "loss_curves"} <= set(labels) and labels["dagster/row_count"] == 3  # rows of `dictionaries`
    checks = {check["name"]: check for check in data["quality"]["assetChecksOrError"]["checks"]}
    assert set(checks) == {"quality", "files_intact"}
    assert all(check["executionForLatestMaterialization"]["evaluation"] is not None for check in checks.values())
    assert checks["files_intact"]["executionForLatestMaterialization"]["evaluation"]["success"]
    slugs = set(configured_prompts(config)) | {cli_slug}
    assert len(slugs) == 3 and set(data["graphs"]["partitionKeys"]) == slugs  # the build's two, the CLI's one
    assert {e["partition"] for e in data["graphEvents"]["assetMaterializations"]} == slugs
    validations = data["validations"]  # one per graph the build ran; the CLI's graph was reported, not run
    assert len(validations) == 2 and all(v["evaluation"]["success"] for v in validations)
    nodes = {"/".join(n["assetKey"]["path"]): n for n in data["assetNodes"]}
    assert all(node["description"] for node in nodes.values())
    assert set(nodes["feature_stats"]["kinds"]) == {"pytorch", "parquet"}
    assert set(nodes["feature_vectors"]["kinds"]) == {"lancedb"}
    assert set(nodes["set_graphs"]["kinds"]) == {"pytorch", "parquet"}  # a partition per (set, prompt)
    assert set(nodes["prompt_set_circuits"]["kinds"]) == {"duckdb", "parquet"}  # a partition per set
    assert data["setGraphs"]["partitionKeys"] == ["tiny:0", "tiny:1"]
    assert sorted(e["partition"] for e in data["setGraphEvents"]["assetMaterializations"]) == ["tiny:0", "tiny:1"]
    (aggregate,) = data["setEvents"]["assetMaterializations"]
    labels = {entry["label"]: entry.get("intValue") for entry in aggregate["metadataEntries"]}
    assert aggregate["partition"] == "tiny" and labels["graphs"] == 2


@pytest.mark.skipif(not Path(CHROMIUM).exists() and not os.environ.get("CI"), reason="needs Debian's chromium")
def test_the_browser_shows_the_build(served, tmp_path_factory: pytest.TempPathFactory) -> None:
    from playwright.sync_api import sync_playwright

    url, config, cli_slug = served
    shots = tmp_path_factory.mktemp("screenshots")
    flags = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=[*flags, "--disable-sync", "--no-first-run"]
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{url}/assets/dictionaries")
        page.get_by_text("Latest materialization").wait_for(timeout=60_000)
        if page.get_by_role("button", name="Skip").count():  # the UI's community prompt on a first visit
            page.get_by_role("button", name="Skip").click()
        page.get_by_text("fvu_excl_pos0").first.wait_for(timeout=30_000)
        curves = page.locator("img[alt^='training FVU']").first  # the loss-curve plot, an inline SVG image
        curves.wait_for(timeout=30_000)
        assert curves.evaluate("image => image.complete && image.naturalWidth > 0")
        page.screenshot(path=str(shots / "dictionaries.png"), full_page=True)
        page.goto(f"{url}/assets/dictionaries?view=checks")
        page.get_by_text("quality").first.wait_for(timeout=30_000)
        page.screenshot(path=str(shots / "dictionaries-checks.png"), full_page=True)
        page.goto(f"{url}/assets/attribution_graphs?view=partitions")
        for slug in [cli_slug, *configured_prompts(config)]:  # long keys are drawn middle-truncated
            page.get_by_text(slug).first.wait_for(state="attached", timeout=60_000)
        page.screenshot(path=str(shots / "graph-partitions.png"), full_page=True)
        browser.close()
    assert (shots / "dictionaries.png").stat().st_size > 10_000


def test_a_prompt_typed_as_a_partition_key_gets_its_graph(served) -> None:
    """A partition a user adds in the UI may be the prompt itself: materializing it builds that prompt's graph."""
    _, config, _ = served
    prompt = "The lazy dog sleeps"
    instance = project_instance(Store(config.store).root)
    instance.add_dynamic_partitions("prompts", [prompt])
    graph_asset = [a for a in build_definitions(config).assets if dg.AssetKey("attribution_graphs") in a.keys]
    project = ProjectResource(config_file=str(Store(config.store).root / EFFECTIVE_CONFIG))
    result = dg.materialize(graph_asset, partition_key=prompt, instance=instance, resources={"project": project})
    assert result.success
    graphs = read_table(Store(config.store), "graphs")
    assert prompt in graphs["prompt"].to_list()


def test_the_sensor_runs_only_prompts_without_a_graph(served, monkeypatch: pytest.MonkeyPatch) -> None:
    """On an instance that knows no partitions, the built prompts come back as partitions, not as runs."""
    from orchestration.sensors import prompts_file_sensor

    _, config, _ = served
    monkeypatch.setenv("CIRCUITDB_CONFIG", str(Store(config.store).root / EFFECTIVE_CONFIG))
    result = prompts_file_sensor(dg.build_sensor_context(instance=dg.DagsterInstance.ephemeral()))
    assert result.run_requests == []
    (request,) = result.dynamic_partitions_requests
    assert sorted(request.partition_keys) == sorted(configured_prompts(config))


def test_a_busy_port_is_one_error_line(served, cli) -> None:
    url, config, _ = served
    port = url.rsplit(":", 1)[1]
    code, _, err = cli("ui", "--port", port, "--store", str(Store(config.store).root))
    assert code == 1 and err.strip().splitlines()[-1].startswith("error: cannot serve on 127.0.0.1:" + port)
    code, _, err = cli("ui", "--port", "0")
    assert code == 2 and err.strip() == "error: Invalid value for '--port': Input should be greater than or equal to 1"

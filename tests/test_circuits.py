"""Prompt sets on the tiny model: a template set built and aggregated, the aggregates against an independent
computation from the per-graph rows, the same aggregates from a set built in shuffled order after its build was
killed and resumed, the set's ablation against `steer` prompt by prompt, and a graph's JSON made from its rows."""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import polars as pl
import pytest

from circuitdb.store import Store, read_table

ANIMALS = ["fox", "dog", "cat", "bird", "horse", "cow", "sheep", "goat"]


@pytest.fixture
def set_store(built_store: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the built store whose graphs keep every node and edge (the tiny model's features are weak:
    pruning at 0.8 keeps almost none), and its config."""
    store = Path(shutil.copytree(built_store, tmp_path / "store"))
    config = tmp_path / "circuitdb.yaml"
    text = (built_store.parent / "circuitdb.yaml").read_text().replace(str(built_store), str(store))
    config.write_text(text + "attribution:\n  node_threshold: 1.0\n  edge_threshold: 1.0\n")
    return store, config


def _name(kind: str, feature_id: str | None, layer: int, token: str) -> str:
    return {"feature": feature_id, "error": f"error {layer}", "token": f"token '{token}'"}.get(kind, "target")


def _expected(store: Store, name: str) -> tuple[dict, dict]:
    """circuit_features and circuit_edges of set `name`, by plain loops over its graphs' rows."""
    slugs = read_table(store, "prompt_sets", partitions=[name])["slug"].to_list()
    features: dict[str, list] = defaultdict(list)
    edges: dict[tuple, list] = defaultdict(list)
    for slug in slugs:
        nodes = read_table(store, "graph_nodes", partitions=[slug]).rows(named=True)
        total = sum(n["influence"] for n in nodes)
        end = len(read_table(store, "graphs", partitions=[slug])["tokens"][0]) - 1
        mine: dict[str, list] = defaultdict(list)
        for n in nodes:
            if n["kind"] == "feature":
                mine[n["feature_id"]].append(n)
        for feature_id, found in mine.items():
            influence = sum(n["influence"] for n in found)
            features[feature_id].append(
                (
                    influence,
                    max(n["activation"] for n in found),
                    influence / total,
                    {end - n["position"] for n in found},
                )
            )
        named = {n["node_id"]: _name(n["kind"], n["feature_id"], n["layer"], n["token"]) for n in nodes}
        summed: dict[tuple, float] = defaultdict(float)
        for source, target, weight in (
            read_table(store, "graph_edges", partitions=[slug]).select("source", "target", "weight").rows()
        ):
            summed[(named[source], named[target])] += weight
        for key, weight in summed.items():
            edges[key].append(weight)
    expected_features = {
        f: (len(v), statistics.fmean(x[0] for x in v), max(x[0] for x in v), statistics.fmean(x[1] for x in v))
        + (statistics.fmean(x[2] for x in v), sorted(set().union(*(x[3] for x in v))))
        for f, v in features.items()
    }
    expected_edges = {
        k: (len(v), statistics.fmean(v), sum(v), max(sum(w > 0 for w in v), sum(w <= 0 for w in v)) / len(v))
        for k, v in edges.items()
    }
    return expected_features, expected_edges


def _stored(store: Store, name: str) -> tuple[dict, dict]:
    features = read_table(store, "circuit_features", partitions=[name]).rows(named=True)
    edges = read_table(store, "circuit_edges", partitions=[name]).rows(named=True)
    return (
        {
            r["feature_id"]: (r["graphs"], r["mean_influence"], r["max_influence"], r["mean_activation"])
            + (r["target_share"], list(r["positions_from_end"]))
            for r in features
        },
        {
            (r["source"], r["target"]): (r["graphs"], r["mean_weight"], r["sum_weight"], r["sign_agreement"])
            for r in edges
        },
    )


def _same(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for key, values in expected.items():
        for mine, theirs in zip(got[key], values, strict=True):
            assert mine == (pytest.approx(theirs, rel=1e-5, abs=1e-9) if isinstance(theirs, float) else theirs), key


def test_a_template_set_is_built_aggregated_and_ablated(set_store, cli) -> None:
    store_path, config = set_store
    store = Store(store_path)
    fillers = [f"--filler={animal}" for animal in ANIMALS[:4]]
    args = ("graph", "build", "--set", "animals", "--template", "The quick brown {} jumps", *fillers)
    code, _, err = cli(*args, "--config", str(config))
    assert code == 0, err
    assert "prompt set animals: 4 of 4 graphs" in err and err.count("replacement") >= 4  # a line per prompt
    rows = read_table(store, "prompt_sets", partitions=["animals"]).sort("position")
    assert rows["prompt"].to_list() == [f"The quick brown {a} jumps" for a in ANIMALS[:4]]
    assert rows["slug"].null_count() == 0 and rows["tags"].to_list() == [[a] for a in ANIMALS[:4]]
    assert not any((store_path / "graphs" / f"{slug}.json").exists() for slug in rows["slug"])  # rows only
    features, edges = _expected(store, "animals")
    assert features, "the tiny graphs hold features once nothing is pruned"
    got_features, got_edges = _stored(store, "animals")
    _same(got_features, features)
    _same(got_edges, edges)
    graphs = read_table(store, "graphs", partitions=rows["slug"].to_list())
    summary = read_table(store, "circuit_sets", partitions=["animals"]).row(0, named=True)
    assert summary["replacement"] == pytest.approx(graphs["replacement_score"].mean())
    assert (summary["prompts"], summary["graphs"]) == (4, 4)

    code, out, err = cli("circuit", "show", "animals", "-f", "json", "--config", str(config))
    assert code == 0, err
    shown = json.loads(out)
    top = max(features.items(), key=lambda item: (item[1][0], item[1][1]))[0]
    assert shown["features"][0]["feature_id"] == top

    # the set's ablation is the mean of `steer` on each prompt (frozen attention, every position)
    code, out, err = cli("circuit", "ablate", "animals", "--feature", top, "-f", "json", "--config", str(config))
    assert code == 0, err
    ablation = json.loads(out)
    changes = []
    for prompt in rows["prompt"]:
        code, out, err = cli(
            "steer", prompt, "--feature", top, "--freeze-attention", "-f", "json", "--config", str(config)
        )
        assert code == 0, err
        steered = json.loads(out)
        first = json.loads(steered["logit_changes"])
        before_top = max(first, key=lambda c: c["p_before"])  # the graph's target: its top logit
        changes.append(before_top["change"])
    assert ablation["circuit"]["probability_change"] == pytest.approx(statistics.fmean(changes), rel=1e-4, abs=1e-7)
    assert ablation["circuit"]["prompts"] == 4 and len(ablation["control"]["features"]) == 1
    assert ablation["control"]["features"][0].startswith(top.rsplit("/", 1)[0] + "/")  # same layer
    runs = read_table(store, "interventions").filter(pl.col("run_id") == ablation["run_id"])
    assert runs.height == 8 and set(runs["prompt_set"]) == {"animals"}
    _the_set_page(store_path, config, features, top)
    _again_like_it_diffed_and_grouped(store, config, cli)


def _again_like_it_diffed_and_grouped(store: Store, config: Path, cli) -> None:
    """`--like` rebuilds the set's prompts under another name; diffed with the first (one dictionary set: the
    identity rule) every recurring feature is matched in every graph; `circuit supernodes` stores what passes."""
    code, _, err = cli("graph", "build", "--set", "animals-again", "--like", "animals", "--config", str(config))
    assert code == 0, err
    again = read_table(store, "prompt_sets", partitions=["animals-again"]).sort("position")
    first = read_table(store, "prompt_sets", partitions=["animals"]).sort("position")
    assert again.select("prompt", "target", "tags").rows() == first.select("prompt", "target", "tags").rows()
    code, out, err = cli("circuit", "diff", "animals", "animals-again", "-f", "json", "--config", str(config))
    assert code == 0, err
    diff = json.loads(out)
    assert diff["summary"]["prompts"] == 4 and diff["summary"]["rule"] == "identity"
    assert diff["features"] and all(f["unmatched"] == 0 and f["match"] == f["feature_id"] for f in diff["features"])
    code, out, err = cli(
        "circuit", "supernodes", "animals", "--min-share", "0.5", "-f", "json", "--config", str(config)
    )
    assert code == 0, err
    saved = [row["name"] for row in json.loads(out) if row["saved"]]
    assert sorted(read_table(store, "circuit_supernodes", partitions=["animals"])["name"]) == sorted(saved)
    code, _, err = cli("circuit", "supernodes", "nope", "--config", str(config))
    assert code == 1 and err.startswith("error:") and "nope" in err


def _the_set_page(store_path: Path, config: Path, features: dict, top: str) -> None:
    """The set's page draws its recurring features and the target; a feature's card lists the graphs it is in."""
    from circuitdb.project import Project
    from query.viewer.app import make_app
    from tests.servers import free_port
    from tests.test_viewer import CHROMIUM

    if not Path(CHROMIUM).exists() and not os.environ.get("CI"):
        return
    import threading

    import uvicorn
    from playwright.sync_api import sync_playwright

    port = free_port()
    app = make_app(Project.open(config, {"store": str(store_path)}))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    errors = []
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(f"http://127.0.0.1:{port}/set/animals")
            page.wait_for_selector("#set-page[data-ready='1']", timeout=60_000)
            assert int(page.get_attribute("#plot", "data-nodes")) == min(150, len(features)) + 1  # and the target
            page.evaluate(
                'id => document.querySelector(`#plot .node[data-id="${CSS.escape(id)}"]`)'
                ".dispatchEvent(new MouseEvent('click', {bubbles: true}))",
                top,
            )
            page.wait_for_selector("#appears li")
            assert page.locator("#appears li").count() == features[top][0]
            assert page.locator("#ablations li").count() == 2  # the features and their random control
            assert page.locator("#prompts a").count() == 4
            browser.close()
    finally:
        server.should_exit = True
    assert errors == []


def test_a_killed_build_resumes_and_order_does_not_matter(set_store, cli) -> None:
    store_path, config = set_store
    store = Store(store_path)
    prompts = [{"prompt": f"The quick brown {a} jumps", "tags": [a]} for a in ANIMALS]
    (store_path.parent / "set.jsonl").write_text("\n".join(json.dumps(p) for p in prompts))
    (store_path.parent / "shuffled.jsonl").write_text("\n".join(json.dumps(p) for p in prompts[::-1]))
    build = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "circuitdb"),
            "graph",
            "build",
            "--set",
            "killed",
            "--prompts",
            str(store_path.parent / "set.jsonl"),
        ]
        + ["--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=os.environ,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if store.table_file("prompt_sets", "killed").exists():
            done = read_table(store, "prompt_sets", partitions=["killed"])["slug"].drop_nulls().len()
            if done >= 2:
                break
        time.sleep(0.05)
    build.send_signal(signal.SIGKILL)
    build.wait()
    left = read_table(store, "prompt_sets", partitions=["killed"])["slug"].null_count()
    assert 0 < left < len(ANIMALS), "killed midway"
    code, _, err = cli("graph", "build", "--set", "killed", "--config", str(config))  # resumes from the table
    assert code == 0 and f"{len(ANIMALS)} of {len(ANIMALS)} graphs" in err, err
    code, _, err = cli(
        "graph", "build", "--set", "shuffled", "--prompts", str(store_path.parent / "shuffled.jsonl"),
        "--config", str(config),
    )  # fmt: skip
    assert code == 0, err
    for name in ("killed", "shuffled"):
        expected_features, expected_edges = _expected(store, name)
        got_features, got_edges = _stored(store, name)
        _same(got_features, expected_features)
        _same(got_edges, expected_edges)
    assert _stored(store, "killed")[0].keys() == _stored(store, "shuffled")[0].keys()
    code, _, err = cli(
        "graph", "build", "--set", "killed", "--template", "a {}", "--filler", "b", "--config", str(config)
    )
    assert code == 1 and "exists with other prompts" in err


def test_bad_prompt_files_get_one_line(set_store, cli, tmp_path: Path) -> None:
    _, config = set_store
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "fine"}\nnot json\n')
    for args, message in (
        (("--prompts", str(bad)), "line 2: not JSON"),
        (("--prompts", str(tmp_path / "none.jsonl")), "prompt file not found"),
        (("--template", "no slot", "--filler", "x"), "one {}"),
        (("--template", "a {}",), "needs one --filler"),
    ):  # fmt: skip
        code, _, err = cli("graph", "build", "--set", "s", *args, "--config", str(config))
        assert code == 1 and err.startswith("error: ") and message in err, (args, err)
    code, _, err = cli("graph", "build", "--set", "bad name!", "--prompts", str(bad), "--config", str(config))
    assert code == 1 and "a prompt set's name" in err


def test_graph_json_from_rows_equals_the_stored_one(built_store: Path, tmp_path: Path, cli) -> None:
    store = Path(shutil.copytree(built_store, tmp_path / "store"))
    slug = read_table(Store(store), "graphs")["slug"][0]
    stored = tmp_path / "stored.json"
    assert cli("graph", "export", slug, "--out", str(stored), "--store", str(store))[0] == 0
    (store / "graphs" / f"{slug}.json").unlink()
    made = tmp_path / "made.json"
    assert cli("graph", "export", slug, "--out", str(made), "--store", str(store))[0] == 0
    assert json.loads(made.read_text()) == json.loads(stored.read_text())


def test_prompts_whose_intervened_logits_diverge_are_counted_not_averaged() -> None:
    from circuitdb.circuits.ablation import _effect

    effect = _effect(["plt/1/2"], [(0.1, 1.0, True), (float("nan"), float("inf"), False), (0.3, 3.0, False)])
    assert (effect.prompts, effect.diverged, effect.flipped) == (2, 1, 0.5)
    assert effect.probability_change == pytest.approx(0.2) and effect.logit_change == pytest.approx(2.0)

"""What people read: the graph tree, the metadata charts, steering's report and the stale-graph schedule,
each against values worked out by hand or recomputed independently."""

from __future__ import annotations

import base64
import contextlib
import json
import re
import shutil
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from assets.plots import svg_bars, svg_lines


def _svg(markdown: str) -> str:
    return base64.b64decode(re.search(r"base64,([A-Za-z0-9+/=]+)\)", markdown).group(1)).decode()


def test_bars_are_as_tall_as_their_counts() -> None:
    svg = _svg(svg_bars([1, 4, 2], [0.0, 1.0, 2.0, 3.0], "hist", width=248, height=248))
    heights = [float(h) for h in re.findall(r'<rect x="[^"]+" y="[^"]+" width="[^"]+" height="([^"]+)"', svg)]
    assert heights == [50.0, 200.0, 100.0]  # plot area 248 - 2·24 = 200 px for the largest count
    assert "1 to 2: 4" in svg and svg_bars([0, 0], [0, 1, 2], "empty") == "*empty: no data*"


def test_lines_span_the_plot_and_share_one_scale() -> None:
    svg = _svg(svg_lines({"a": [0.0, 1.0], "b": [0.5, 0.5, 0.5]}, "curves", width=248, height=248))
    a, b = re.findall(r'points="([^"]+)"', svg)
    assert a == "24.0,224.0 224.0,24.0"  # low at the bottom, high at the top, first to last x
    assert b == "24.0,124.0 124.0,124.0 224.0,124.0"


def _node(node_id: str, kind: str, **fields) -> dict:
    base = {"node_id": node_id, "kind": kind, "position": 1, "token": "x", "layer": 0, "label": "", "activation": 0}
    return base | {"feature_id": node_id} | fields


def test_the_graph_tree_follows_the_strongest_inputs(capsys) -> None:
    from query.render import render_graph_tree

    graph = {"slug": "s", "prompt": "p" * 200, "n_nodes_pruned": 5, "n_edges_pruned": 4, "n_nodes": 9}
    graph |= {"replacement_score": 0.5, "completeness_score": 0.75}
    nodes = [
        _node("L", "logit", label="output ' Paris' (p=0.9)", activation=0.9),
        _node("plt/1/2", "feature", label="capitals"),
        _node("plt/0/7", "feature", label="France"),
        _node("E", "error", layer=1),
        _node("T", "token", token="France"),
    ]
    edges = [("plt/1/2", "L", 2.0), ("E", "L", 1.0), ("T", "L", -0.5), ("plt/0/7", "plt/1/2", 3.0)]
    render_graph_tree(graph, nodes, edges, [{"name": "France→capital", "node_ids": ["plt/0/7", "plt/1/2"]}], 2, 1)
    out = capsys.readouterr().out
    header, tree = out.split("output ' Paris' (p=0.9)\n")
    assert header.splitlines()[-1] == "supernode France→capital: plt/0/7, plt/1/2"
    assert "'pppp" in header and "…" in header and "(200 characters)" in " ".join(header.split())
    assert "5 nodes, 4 edges kept of 9 nodes; replacement score 0.500, completeness 0.750" in " ".join(header.split())
    # width 1: only the strongest explained input; errors carry 1.0 of |2| + |1| + |0.5| = 3.5 of L's input
    assert tree.splitlines() == [
        "└─ +2  plt/1/2 @1 'x'  capitals   (errors: 29% of the input)",
        "   └─ +3  plt/0/7 @1 'x'  France   (errors: 0% of the input)",
    ]  # the token into L is cut by width 1; plt/0/7 has no inputs


@pytest.fixture
def store_copy(built_store: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(built_store, tmp_path / "store"))


def test_steering_reports_and_records_the_run(store_copy: Path, llama_dir: Path) -> None:
    """Scale 1 changes nothing; clamping a feature high moves the probabilities, and the listed rows are the
    union of both top-k, their changes after − before, recorded as returned."""
    from circuitdb.attribution.steering import Clamp, Steered, SteeringRun, steer_prompt
    from circuitdb.attribution.transcoders import stored_transcoders
    from circuitdb.config import AttributionConfig
    from circuitdb.models import load_model
    from circuitdb.store import Store, read_table

    store, lm, cfg = Store(store_copy), load_model(str(llama_dir), device="cpu"), AttributionConfig()
    transcoders = stored_transcoders(store, "plt")

    def steer(clamp: Clamp):
        run = SteeringRun("fox jumps", [Steered("plt/1/3", None)], clamp, False, 0)
        return steer_prompt(store, lm, transcoders, cfg, run, 3)

    same, changes = steer(Clamp("scale", 1.0))
    assert all(abs(change) < 1e-8 for *_, change in changes) and same["top_token_before"] == same["top_token_after"]
    row, changes = steer(Clamp("set", 50.0))
    assert 3 <= len(changes) <= 6 and any(abs(change) > 1e-4 for *_, change in changes)
    assert all(change == pytest.approx(after - before) for _, before, after, change in changes)
    assert [after for _, _, after, _ in changes] == sorted((after for _, _, after, _ in changes), reverse=True)
    recorded = read_table(store, "interventions").filter(pl.col("run_id") == row["run_id"]).row(0, named=True)
    assert recorded["features"] == ["plt/1/3"] and recorded["mode"] == "set" and recorded["value"] == 50.0
    assert [c["change"] for c in json.loads(recorded["logit_changes"])] == [c[3] for c in changes]


def test_the_schedule_requests_the_graphs_older_than_their_transcoders(store_copy: Path, monkeypatch) -> None:
    with contextlib.ExitStack() as stack:
        _schedule_requests_stale_graphs(store_copy, monkeypatch, stack)


def _schedule_requests_stale_graphs(store_copy: Path, monkeypatch, stack: contextlib.ExitStack) -> None:
    from assets.partitions import prompt_partitions
    from circuitdb.store import Store, read_table, write_partition
    from orchestration.schedules import refresh_stale_graphs

    store = Store(store_copy)
    config = store_copy.parent / "circuitdb.yaml"
    config.write_text(f"store: {store_copy}\n")
    monkeypatch.setenv("CIRCUITDB_CONFIG", str(config))
    graphs = read_table(store, "graphs").sort("created_at")
    instance = stack.enter_context(dg.instance_for_test())
    instance.add_dynamic_partitions(prompt_partitions.name, graphs["slug"].to_list())
    assert isinstance(refresh_stale_graphs(dg.build_schedule_context(instance=instance)), dg.SkipReason)

    # the transcoders retrained between the first graph and the second: only the first is requested
    first, second = graphs["created_at"][0], graphs["created_at"][1]
    assert first < second
    retrained = first + (second - first) / 2
    for row in read_table(store, "dictionaries").iter_rows(named=True):
        partition = f"{row['name']}-layer-{row['layer']:03d}"
        write_partition(store, "dictionaries", partition, pl.DataFrame([row | {"created_at": retrained}]))
    requests = refresh_stale_graphs(dg.build_schedule_context(instance=instance))
    assert [request.partition_key for request in requests] == [graphs["slug"][0]]

"""Reading a stored graph: influence towards one logit, feature paths, subgraph scores, each against an
independent computation (dense matrices, brute force) on a random 12-layer graph; supernodes and pinned
sets saved, renamed and deleted."""

from __future__ import annotations

import itertools
import random
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from circuitdb.attribution.pruning import normalized
from circuitdb.circuits.pruned import PrunedGraph
from circuitdb.errors import CircuitDBError

N_LAYERS = 12


def _random_graph(seed: int, positions: int = 4, per_cell: int = 2) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Features and errors on 12 layers × `positions`, tokens below, two logits above; edges only go up a
    layer (or more) at the same or a later position, so the graph is acyclic as attribution graphs are."""
    rng = random.Random(seed)
    nodes = [
        {"node_id": f"E_{p}", "kind": "token", "layer": -1, "position": p, "activation": 0.0} for p in range(positions)
    ]
    for layer, p in itertools.product(range(N_LAYERS), range(positions)):
        for i in range(per_cell):
            nodes.append(
                {"node_id": f"{layer}_{i}_{p}", "kind": "feature", "layer": layer, "position": p, "activation": 1.0}
            )
        nodes.append({"node_id": f"err_{layer}_{p}", "kind": "error", "layer": layer, "position": p, "activation": 0.0})
    last = positions - 1
    for i, probability in enumerate((0.7, 0.2)):
        nodes.append(
            {"node_id": f"L_{i}", "kind": "logit", "layer": N_LAYERS, "position": last, "activation": probability}
        )
    frame = pl.DataFrame(nodes)
    edges = []
    for target in nodes:
        if target["kind"] in ("token", "error"):
            continue
        for source in nodes:
            if (
                source["kind"] == "logit"
                or source["layer"] >= target["layer"]
                or source["position"] > target["position"]
            ):
                continue
            if rng.random() < 0.3:
                edges.append({"source": source["node_id"], "target": target["node_id"], "weight": rng.uniform(-1, 1)})
    return frame, pl.DataFrame(edges)


def _dense(nodes: pl.DataFrame, edges: pl.DataFrame) -> torch.Tensor:
    index = {node_id: i for i, node_id in enumerate(nodes["node_id"])}
    matrix = torch.zeros(nodes.height, nodes.height, dtype=torch.float64)
    for source, target, weight in edges.iter_rows():
        matrix[index[target], index[source]] = weight
    return matrix


def influence(matrix: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """wᵀ(M + M² + …) by its definition: products until they vanish (the graphs are acyclic)."""
    current, total = weights @ matrix, torch.zeros_like(weights)
    while current.any():
        total += current
        current = current @ matrix
    return total


def test_influence_towards_one_logit_matches_dense_matrices() -> None:
    nodes, edges = _random_graph(0)
    graph = PrunedGraph(nodes, edges)
    matrix = normalized(_dense(nodes, edges))
    for logit in ("L_0", "L_1", None):
        weights = torch.zeros(nodes.height, dtype=torch.float64)
        if logit is None:
            weights[-2:] = torch.tensor([0.7, 0.2], dtype=torch.float64)
        else:
            weights[nodes["node_id"].to_list().index(logit)] = 1.0
        expected = influence(matrix, weights) + weights
        reading = graph.for_logit(logit)
        assert reading.node_scores == pytest.approx(expected.numpy(), rel=1e-9, abs=1e-12)
        index = {node_id: i for i, node_id in enumerate(nodes["node_id"])}
        rows = [index[t] for t in graph.edges["target"]]
        columns = [index[s] for s in graph.edges["source"]]
        assert reading.edge_scores == pytest.approx((matrix * expected[:, None])[rows, columns].numpy(), rel=1e-9)
    with pytest.raises(CircuitDBError, match="not one of the graph's logits"):
        graph.for_logit("3_0_1")


def test_top_paths_are_the_strongest_by_brute_force() -> None:
    nodes, edges = _random_graph(1, positions=2, per_cell=1)
    nodes = nodes.filter((pl.col("layer") < 4) | (pl.col("kind") == "logit"))  # few enough paths to list all
    graph = PrunedGraph(nodes, edges)
    shares = {}
    kinds = dict(zip(nodes["node_id"], nodes["kind"], strict=True))
    for (source, target), share in zip(
        zip(graph.edges["source"], graph.edges["target"], strict=True), _shares(graph.edges), strict=True
    ):
        shares.setdefault(target, []).append((source, share))

    def every_path(node: str) -> list[tuple[list[str], float]]:
        if kinds[node] == "token":
            return [([node], 1.0)]
        found = []
        for source, share in shares.get(node, []):
            if kinds[source] != "error":
                found += [([*path, node], value * share) for path, value in every_path(source)]
        return found

    every = sorted((p for p in every_path("L_0") if len(p[0]) > 2), key=lambda p: -p[1])
    best = graph.top_paths("L_0", count=5, beam=10_000, fan_in=10_000)
    assert [p.nodes for p in best] == [p for p, _ in every[:5]]
    assert [p.share for p in best] == pytest.approx([s for _, s in every[:5]])


def _shares(edges: pl.DataFrame) -> list[float]:
    totals = edges.group_by("target").agg(pl.col("weight").abs().sum().alias("total"))
    joined = edges.join(totals, on="target", how="left", maintain_order="left")
    return (joined["weight"].abs() / joined["total"]).to_list()


def _subgraph_by_the_recipe(nodes: pl.DataFrame, edges: pl.DataFrame, pinned: list[str]) -> tuple[float, float]:
    """Neuronpedia's recipe spelled out: the pinned features, errors joined to a pinned node by an edge, all
    tokens and logits; the adjacency among them, normalized; circuit-tracer's two scores."""
    kinds = dict(zip(nodes["node_id"], nodes["kind"], strict=True))
    linked = {
        e for s, t in zip(edges["source"], edges["target"], strict=True) for e in (s, t) if s in pinned or t in pinned
    }
    keep = [
        n
        for n in nodes["node_id"]
        if kinds[n] in ("token", "logit")
        or n in pinned
        and kinds[n] == "feature"
        or kinds[n] == "error"
        and (n in linked or n in pinned)
    ]
    sub_nodes = nodes.filter(pl.col("node_id").is_in(keep))
    sub_edges = edges.filter(pl.col("source").is_in(keep) & pl.col("target").is_in(keep))
    matrix = normalized(_dense(sub_nodes, sub_edges))
    weights = torch.tensor(np.where(sub_nodes["kind"] == "logit", sub_nodes["activation"], 0.0))
    scores = influence(matrix, weights)
    kind = sub_nodes["kind"].to_numpy()
    token, error = scores[kind == "token"].sum(), scores[kind == "error"].sum()
    non_error = 1 - matrix[:, torch.tensor(kind == "error")].sum(1)
    output = scores + weights
    return float(token / (token + error)), float((non_error * output).sum() / output.sum())


def test_subgraph_scores_follow_the_recipe() -> None:
    nodes, edges = _random_graph(2)
    graph = PrunedGraph(nodes, edges)
    for pinned in (
        ["11_0_3", "10_1_3", "5_0_2"],
        ["0_0_0", "err_3_1", "L_0"],
        list(nodes.filter(pl.col("kind") == "feature")["node_id"]),
    ):
        replacement, completeness = _subgraph_by_the_recipe(nodes, edges, pinned)
        scores = graph.subgraph_scores(pinned)
        assert (scores.replacement, scores.completeness) == pytest.approx((replacement, completeness), rel=1e-9)
    everything = graph.scores()
    all_features = list(nodes.filter(pl.col("kind") != "logit")["node_id"])
    assert graph.subgraph_scores(all_features)[:2] == pytest.approx(everything[:2])
    with pytest.raises(CircuitDBError, match="pin at least one feature"):
        graph.subgraph_scores(["E_0"])


def test_supernodes_and_pin_sets_are_saved_renamed_and_deleted(built_store: Path, tmp_path: Path, cli) -> None:
    from circuitdb.store import Store, read_table
    from query.engine import run_sql
    from query.graph_view import annotations, delete_annotation, rename_annotation, save_annotation

    store = Store(shutil.copytree(built_store, tmp_path / "store"))
    slug = read_table(store, "graphs")["slug"][0]
    first, second = sorted(read_table(store, "graph_nodes", partitions=[slug])["node_id"])[:2]
    save_annotation(store, slug, "supernode", "pair", [second, first])
    save_annotation(store, slug, "pins", "pair", [first])  # a pin set of the same name is its own row
    assert annotations(store, slug, "supernode") == [{"name": "pair", "node_ids": [first, second]}]
    assert rename_annotation(store, slug, "supernode", "pair", "renamed") == [
        {"name": "renamed", "node_ids": [first, second]}
    ]
    with pytest.raises(CircuitDBError, match="no supernode named 'pair'"):
        delete_annotation(store, slug, "supernode", "pair")
    code, out, _ = cli("graph", "supernode", slug, "renamed", "--delete", "--store", str(store.root))
    assert code == 0 and annotations(store, slug, "supernode") == []
    assert annotations(store, slug, "pins") == [{"name": "pair", "node_ids": [first]}]
    rows = run_sql(store, "SELECT name, kind, deleted FROM graph_annotations ORDER BY kind, name").rows
    assert sorted(rows) == [("pair", "pins", False), ("pair", "supernode", True), ("renamed", "supernode", True)]
    code, _, err = cli("graph", "supernode", slug, "x", first, "--delete", "--store", str(store.root))
    assert code != 0 and err.startswith("error: give the node ids to group, --rename NEW or --delete")


def test_supernode_level_sums_edges_through_groups() -> None:
    """a and b grouped as G: a→L 1 and b→L 2 make G→L 3, c→a 0.5 and c→b 0.25 make c→G 0.75, a→b goes."""
    from query.graph_view import supernode_level

    node = {"kind": "feature", "position": 2, "token": " x", "feature_id": "f", "label": "", "layer": 1}
    nodes = [node | {"node_id": "a", "influence": 0.2}, node | {"node_id": "b", "position": 1, "influence": 0.3}]
    nodes += [node | {"node_id": "c", "influence": 0.1}, node | {"node_id": "L", "kind": "logit", "influence": 0.0}]
    edges = [("a", "L", 1.0), ("b", "L", 2.0), ("c", "a", 0.5), ("c", "b", 0.25), ("a", "b", 3.0)]
    merged, summed = supernode_level(nodes, edges, [{"name": "G", "node_ids": ["a", "b"]}])
    assert sorted(summed) == [("c", "group:G", 0.75), ("group:G", "L", 3.0)]
    (group,) = [n for n in merged if n["kind"] == "supernode"]
    assert group["node_id"] == "group:G" and group["position"] == 1 and group["influence"] == pytest.approx(0.5)
    assert {n["node_id"] for n in merged} == {"group:G", "c", "L"}

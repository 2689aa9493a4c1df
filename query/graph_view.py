"""What a graph page (and `graph show`) asks of one stored graph: the nodes and edges that matter for a chosen
logit, the paths into it, the scores of a pinned subgraph, and the supernodes and pinned sets saved for it."""

from __future__ import annotations

import json
from typing import Literal

import numpy as np
import polars as pl

from circuitdb.circuits.pruned import PrunedGraph
from circuitdb.errors import CircuitDBError
from circuitdb.store import Store, read_table
from circuitdb.store.graphs import graph_row, write_annotation
from query.questions import require

AnnotationKind = Literal["supernode", "pins"]
NAME_LIMIT = 100


def graph_tree(store: Store, slug: str) -> tuple[dict, list[dict], list[tuple], list[dict]]:
    """A graph's `graphs` row, its pruned nodes, its (source, target, weight) edges and its supernodes."""
    row = graph_row(require(store, "graphs"), slug)
    nodes, edges = _rows(store, slug)
    return row, nodes.to_dicts(), edges.rows(), annotations(store, slug, "supernode")


def supernode_level(nodes: list[dict], edges: list[tuple], supernodes: list[dict]) -> tuple[list[dict], list[tuple]]:
    """The graph with each supernode's members drawn as one node ('group:NAME', kind 'supernode', at its members'
    first position): edges into or out of members summed per other end, edges among members dropped. A node in
    two supernodes goes to the first."""
    group_of = {}
    for group in supernodes:
        for node_id in group["node_ids"]:
            group_of.setdefault(node_id, f"group:{group['name']}")
    by_id = {node["node_id"]: node for node in nodes}
    merged = [node for node in nodes if node["node_id"] not in group_of]
    for group in supernodes:
        members = [by_id[n] for n in group["node_ids"] if group_of.get(n) == f"group:{group['name']}" and n in by_id]
        if members:
            first = min(members, key=lambda node: node["position"])
            influence = sum(node["influence"] or 0.0 for node in members)
            label = f"{group['name']} ({len(members)} features)"
            merged.append(first | {"node_id": f"group:{group['name']}", "kind": "supernode", "label": label})
            merged[-1]["influence"] = influence
    summed: dict[tuple[str, str], float] = {}
    for source, target, weight in edges:
        source, target = group_of.get(source, source), group_of.get(target, target)
        if source != target:
            summed[(source, target)] = summed.get((source, target), 0.0) + weight
    return merged, [(source, target, weight) for (source, target), weight in summed.items()]


def _rows(store: Store, slug: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The graph's pruned nodes (by node_id) and edges: one partition each, named by the slug."""
    nodes = read_table(store, "graph_nodes", partitions=[slug]).drop("slug").sort("node_id")
    edges = read_table(store, "graph_edges", ["source", "target", "weight"], partitions=[slug])
    return nodes, edges


def top_logit(nodes: pl.DataFrame) -> str:
    """The most probable logit node (for graphs of other targets, the first target)."""
    logits = nodes.filter(pl.col("kind") == "logit").sort("activation", descending=True, nulls_last=True)
    return logits["node_id"][0]


def graph_document(store: Store, slug: str, max_edges: int, logit: str | None = None) -> dict:
    """What a graph page draws for `logit` (default: the most probable): the `graphs` row; every pruned node
    with its influence on that logit (`score`); the `max_edges` edges of highest influence on it, not of
    largest |weight| (most of those come from errors and tokens); the strongest feature paths into it; the
    pruned graph's scores; the saved supernodes, pinned sets and the interventions run from the page."""
    row = graph_row(require(store, "graphs"), slug)
    nodes, edges = _rows(store, slug)
    graph = PrunedGraph(nodes, edges)
    logit = logit or top_logit(nodes)
    reading = graph.for_logit(logit)
    kept = np.argsort(-reading.edge_scores, kind="stable")[:max_edges]
    chosen = graph.edges[kept]
    scores = graph.scores()
    return {
        "graph": row,
        "logit": logit,
        "nodes": nodes.with_columns(score=pl.Series(reading.node_scores)).to_dicts(),
        "edges": [[*edge, float(score)] for edge, score in zip(chosen.rows(), reading.edge_scores[kept], strict=True)],
        "n_edges": row["n_edges_pruned"],
        "paths": [path._asdict() for path in graph.top_paths(logit)],
        "scores": {"replacement": scores.replacement, "completeness": scores.completeness},
        "supernodes": annotations(store, slug, "supernode"),
        "pins": annotations(store, slug, "pins"),
        "interventions": graph_interventions(store, slug),
        "same_prompt": _same_prompt(store, row),
    }


def _same_prompt(store: Store, row: dict) -> list[dict]:
    """Other graphs of the graph's prompt (other dictionaries or targets): what its page offers to compare."""
    graphs = read_table(store, "graphs", ["slug", "prompt", "dictionaries", "target"])
    others = graphs.filter((pl.col("prompt") == row["prompt"]) & (pl.col("slug") != row["slug"]))
    return others.select("slug", "dictionaries", "target").to_dicts()


def subgraph_scores(store: Store, slug: str, node_ids: list[str]) -> dict:
    """Replacement and completeness of the subgraph the pinned `node_ids` span (see `PrunedGraph`)."""
    graph_row(require(store, "graphs"), slug)
    scores = PrunedGraph(*_rows(store, slug)).subgraph_scores(node_ids)
    return scores._asdict()


def steerable_nodes(store: Store, slug: str, node_ids: list[str]) -> tuple[str, list[tuple[str, int]]]:
    """The graph's prompt and the (feature_id, position) of the pinned feature nodes among `node_ids`."""
    row = graph_row(require(store, "graphs"), slug)
    nodes, _ = _rows(store, slug)
    chosen = nodes.filter(pl.col("node_id").is_in(node_ids))
    unknown = sorted(set(node_ids) - set(chosen["node_id"]))
    if unknown:
        raise CircuitDBError(f"graph {slug} has no node {unknown[0]!r} (after pruning)")
    features = chosen.filter(pl.col("kind") == "feature")
    if features.is_empty():
        raise CircuitDBError("pin at least one feature to intervene on (errors, tokens and logits cannot be steered)")
    return row["prompt"], list(zip(features["feature_id"], features["position"], strict=True))


def graph_interventions(store: Store, slug: str) -> list[dict]:
    """Interventions run from the graph's page, newest first."""
    runs = read_table(store, "interventions").filter(pl.col("slug") == slug).sort("created_at", descending=True)
    return [
        {key: row[key] for key in ("run_id", "features", "mode", "value", "freeze_attention", "generated")}
        | {"top_token_before": row["top_token_before"], "top_token_after": row["top_token_after"]}
        | {"changes": json.loads(row["logit_changes"]), "node_positions": row["node_positions"]}
        for row in runs.iter_rows(named=True)
    ]


def annotations(store: Store, slug: str, kind: AnnotationKind) -> list[dict]:
    """The supernodes (or pinned sets) saved for graph `slug`: name and node ids, oldest first; of several
    rows of one name the newest (a store written before each had its own partition holds several in one),
    and none for a name whose newest row says it was deleted."""
    frame = read_table(store, "graph_annotations").filter(pl.col("slug") == slug)
    frame = frame.filter(pl.col("kind").fill_null("supernode") == kind).sort("created_at")
    frame = frame.unique("name", keep="last").filter(~pl.col("deleted").fill_null(False)).sort("created_at")
    return [_annotation(row) for row in frame.iter_rows(named=True)]


def _annotation(row: dict) -> dict:
    """A saved group's name and nodes; an automatic supernode's validation beside them."""
    saved = {"name": row["name"], "node_ids": list(row["node_ids"])}
    if row["source"] != "auto":
        return saved
    validation = {key: row[key] for key in ("effect", "control", "control_ci95", "interchangeability")}
    validation["prompt_set"] = json.loads(row["parameters"] or "{}").get("prompt_set")  # validated over a set
    return saved | {"source": "auto", "validation": validation}


def save_annotation(store: Store, slug: str, kind: AnnotationKind, name: str, node_ids: list[str]) -> list[dict]:
    """Save `node_ids` of graph `slug` under `name` (replacing what that name held). Each name is its own
    partition, written whole: two writers (the viewer, the CLI, on one machine or two) never read, change and
    write back one another's rows, so nothing is lost. Returns the graph's annotations of that kind."""
    name = _checked_name(name)
    graph_row(require(store, "graphs"), slug)
    known = set(read_table(store, "graph_nodes", ["node_id"], partitions=[slug])["node_id"])
    unknown = sorted(set(node_ids) - known)
    least = 2 if kind == "supernode" else 1
    if len(set(node_ids)) < least or unknown:
        what = "a supernode groups two" if kind == "supernode" else "a pinned set holds one"
        raise CircuitDBError(f"{what} or more of the graph's nodes (unknown: {unknown})")
    write_annotation(store, slug, kind, name, sorted(set(node_ids)), deleted=False)
    return annotations(store, slug, kind)


def delete_annotation(store: Store, slug: str, kind: AnnotationKind, name: str) -> list[dict]:
    """Delete the supernode (or pinned set) `name`: its partition now says so. Returns what is left."""
    if name not in {saved["name"] for saved in annotations(store, slug, kind)}:
        raise CircuitDBError(f"graph {slug} has no {kind} named {name!r}")
    write_annotation(store, slug, kind, name, [], deleted=True)
    return annotations(store, slug, kind)


def rename_annotation(store: Store, slug: str, kind: AnnotationKind, name: str, new_name: str) -> list[dict]:
    """Save `name`'s nodes under `new_name`, then delete `name` (a failure between leaves both, never none)."""
    saved = {group["name"]: group["node_ids"] for group in annotations(store, slug, kind)}
    if name not in saved:
        raise CircuitDBError(f"graph {slug} has no {kind} named {name!r}")
    if _checked_name(new_name) in saved:
        raise CircuitDBError(f"graph {slug} already has a {kind} named {new_name.strip()!r}")
    save_annotation(store, slug, kind, new_name, saved[name])
    return delete_annotation(store, slug, kind, name)


def _checked_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > NAME_LIMIT:
        raise CircuitDBError(f"a name has 1 to {NAME_LIMIT} characters")
    return name


def set_document(store: Store, name: str, top: int = 150) -> dict:
    """What a prompt set's page draws: its `circuit_sets` row, its `top` most recurring features placed by layer
    and by position counted from the prompt's end (the nearest to the end they appear at), the aggregated edges
    among them and into the target, the graphs each appears in, the set's prompts and its ablation runs."""
    summary = read_table(store, "circuit_sets", partitions=[name])
    if summary.is_empty():
        raise CircuitDBError(f"no aggregated prompt set {name!r}; `circuitdb circuit show {name}` aggregates it")
    prompts = read_table(store, "prompt_sets", partitions=[name]).sort("position")
    features = read_table(store, "circuit_features", partitions=[name]).head(top)
    shown = set(features["feature_id"])
    span = max([0, *(min(p) for p in features["positions_from_end"] if len(p))])
    nodes = [
        {"node_id": f["feature_id"], "feature_id": f["feature_id"], "kind": "feature", "layer": f["layer"]}
        | {"position": span - min(f["positions_from_end"] or [0]), "score": f["mean_influence"] * f["graph_share"]}
        | {"label": f["label"], "graphs": f["graphs"], "token": "", "activation": f["mean_activation"]}
        for f in features.iter_rows(named=True)
    ]
    layers = read_table(store, "graph_nodes", ["layer", "kind"], partitions=[prompts["slug"].drop_nulls()[0]])
    n_layers = int(layers.filter(pl.col("kind") == "logit")["layer"].max())
    nodes.append({"node_id": "target", "kind": "logit", "layer": n_layers, "position": span, "score": 1.0})
    nodes[-1] |= {"label": "the prompts' targets", "token": "target", "activation": 1.0, "feature_id": None}
    edges = read_table(store, "circuit_edges", partitions=[name])
    edges = edges.filter(pl.col("source").is_in(list(shown)) & pl.col("target").is_in([*shown, "target"]))
    slugs = prompts["slug"].drop_nulls().to_list()
    found = read_table(store, "graph_nodes", ["slug", "feature_id"], partitions=slugs)
    found = found.filter(pl.col("feature_id").is_in(list(shown))).unique()
    where = found.group_by("feature_id").agg(pl.col("slug").sort())
    appears = dict(zip(where["feature_id"], where["slug"].to_list(), strict=True))
    runs = read_table(store, "interventions").filter(pl.col("prompt_set") == name)
    return {
        "set": summary.row(0, named=True),
        "tokens": [f"−{span - i}" if i < span else "end" for i in range(span + 1)],
        "nodes": [node | {"appears_in": appears.get(node["node_id"], [])} for node in nodes],
        "edges": [
            [s, t, w, abs(w) * g] for s, t, w, g in edges.select("source", "target", "mean_weight", "graphs").rows()
        ],
        "prompts": prompts.select("position", "prompt", "target", "slug").to_dicts(),
        "ablations": _ablation_summaries(runs),
    }


def _ablation_summaries(runs: pl.DataFrame) -> list[dict]:
    """Per ablation run and feature list: prompts, mean change of the target's probability, flips."""
    if runs.is_empty():
        return []
    changes = runs.with_columns(
        change=pl.col("logit_changes").str.json_path_match("$[0].change").cast(pl.Float64),
        flipped=pl.col("top_token_before") != pl.col("top_token_after"),
        features_text=pl.col("features").list.join(", "),
    )
    summary = changes.group_by("run_id", "features_text").agg(
        pl.len().alias("prompts"), pl.col("change").mean(), pl.col("flipped").mean(), pl.col("created_at").max()
    )
    return summary.sort("created_at", descending=True).drop("created_at").to_dicts()

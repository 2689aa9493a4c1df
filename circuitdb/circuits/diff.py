"""Two graphs of one prompt side by side: which nodes they share, which each holds alone, how the edges between
shared nodes changed, and their scores and paths into the target.

How nodes are matched depends on what differs between the graphs (`match_rule`):
- `identity` (one model, one dictionary set): a feature by its id at the same position, an error by (layer,
  position), a token by position, a logit by its token;
- `decoder` (one model, two dictionary sets: per-layer vs cross-layer, skip vs none): tokens, errors and logits
  as above; a feature of one with a feature of the other at the same layer and position whose decoder directions
  agree (cosine ≥ `min_cosine`), best pairs first, each feature matched once. The activation correlation of the
  pair over the prompt's positions (from the graphs' nodes) is shown beside the cosine;
- `models` (two models with one tokenizer, e.g. base vs instruction-tuned): tokens by position, logits by token,
  errors by (relative depth, position); a feature with a feature at the same position and relative depth (within
  `depth_band` of the model's layers) whose labels share the most words (explanations, or the heuristic label
  that names the logits a feature promotes), Jaccard ≥ `min_label_overlap`.
"""

from __future__ import annotations

import re
from typing import Literal, NamedTuple

import numpy as np
import polars as pl

from circuitdb.circuits.pruned import PrunedGraph
from circuitdb.errors import CircuitDBError
from circuitdb.store import Store, read_table, write_partition
from circuitdb.store.graphs import graph_row

MatchRule = Literal["identity", "decoder", "models"]


class DiffSettings(NamedTuple):
    """What counts as a match where identities differ."""

    min_cosine: float = 0.5
    """Decoder rule: the least cosine between two features' decoder directions that matches them."""
    depth_band: float = 0.1
    """Models rule: how far apart (as a share of each model's layers) two matched features' layers may be."""
    min_label_overlap: float = 0.3
    """Models rule: the least Jaccard overlap of two features' label words that matches them."""


DEFAULT_SETTINGS = DiffSettings()


def match_rule(a: dict, b: dict) -> MatchRule:
    """How two graphs' nodes are matched (`graphs` rows): the same prompt's tokens are required."""
    if a["token_ids"] != b["token_ids"]:
        raise CircuitDBError(
            f"{a['slug']} and {b['slug']} are graphs of different token sequences: a diff compares one prompt "
            "(with one tokenizer) under two dictionary sets or two models"
        )
    if a["model"] != b["model"]:
        return "models"
    return "identity" if a["dictionaries"] == b["dictionaries"] else "decoder"


def _other_nodes(a: pl.DataFrame, b: pl.DataFrame, n_layers: tuple[int, int]) -> pl.DataFrame:
    """Tokens by position, logits by token, errors by (layer, position) or, across models, by the nearest
    relative depth: pairs (a, b) with rule and score 1."""
    pairs = []
    for kind in ("token", "logit"):
        key = "position" if kind == "token" else "token"
        left = a.filter(pl.col("kind") == kind).select("node_id", key)
        right = b.filter(pl.col("kind") == kind).select("node_id", key)
        pairs.append(left.join(right, on=key, suffix="_b").select(a="node_id", b="node_id_b"))
    errors_a = a.filter(pl.col("kind") == "error").with_columns(depth=_depth(n_layers[0]))
    errors_b = b.filter(pl.col("kind") == "error").with_columns(depth=_depth(n_layers[1]))
    if n_layers[0] == n_layers[1]:
        pairs.append(errors_a.join(errors_b, on=["layer", "position"], suffix="_b").select(a="node_id", b="node_id_b"))
    else:  # each error of A with B's error of the nearest relative depth at its position, once
        joined = errors_a.join(errors_b, on="position", suffix="_b").with_columns(
            gap=(pl.col("depth") - pl.col("depth_b")).abs()
        )
        nearest = joined.sort("gap").unique("node_id", keep="first").sort("gap").unique("node_id_b", keep="first")
        pairs.append(nearest.select(a="node_id", b="node_id_b"))
    return pl.concat(pairs).with_columns(rule=pl.lit("identity"), score=pl.lit(1.0))


def _depth(n_layers: int) -> pl.Expr:
    """A layer as a share of the model's depth (its middle): layer l of L at (l + 0.5) / L."""
    return (pl.col("layer") + 0.5) / n_layers


def _identity_features(a: pl.DataFrame, b: pl.DataFrame) -> pl.DataFrame:
    left = a.filter(pl.col("kind") == "feature").select("node_id", "feature_id", "position")
    right = b.filter(pl.col("kind") == "feature").select("node_id", "feature_id", "position")
    pairs = left.join(right, on=["feature_id", "position"], suffix="_b").select(a="node_id", b="node_id_b")
    return pairs.with_columns(rule=pl.lit("identity"), score=pl.lit(1.0))


def _one_to_one(candidates: pl.DataFrame) -> pl.DataFrame:
    """Best pairs first, each node of either side used once (a greedy assignment by score)."""
    taken_a: set[str] = set()
    taken_b: set[str] = set()
    kept = []
    for row in candidates.sort("score", descending=True).iter_rows(named=True):
        if row["a"] not in taken_a and row["b"] not in taken_b:
            taken_a.add(row["a"])
            taken_b.add(row["b"])
            kept.append(row)
    return pl.DataFrame(kept, schema=candidates.schema)


def activation_correlation(
    a: pl.DataFrame, b: pl.DataFrame, n_positions: int, pairs: list[tuple[str, str]]
) -> dict[tuple[str, str], float]:
    """Pearson correlation over the prompt's positions of each pair's (feature id of A, feature id of B)
    activations in the graphs (0 where the feature has no node); NaN where either is constant."""
    profiles = []
    for nodes in (a, b):
        features = nodes.filter(pl.col("kind") == "feature")
        ids = features["feature_id"].unique(maintain_order=True).to_list()
        where = {feature_id: i for i, feature_id in enumerate(ids)}
        matrix = np.zeros((len(ids), n_positions))
        for feature_id, position, value in features.select("feature_id", "position", "activation").iter_rows():
            matrix[where[feature_id], position] = value
        profiles.append((ids, matrix))
    (ids_a, x), (ids_b, y) = profiles
    x = x - x.mean(1, keepdims=True)
    y = y - y.mean(1, keepdims=True)
    norms = np.linalg.norm(x, axis=1)[:, None] * np.linalg.norm(y, axis=1)[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        correlation = np.where(norms > 0, x @ y.T / norms, np.nan)
    row, column = {f: i for i, f in enumerate(ids_a)}, {f: j for j, f in enumerate(ids_b)}
    return {(fa, fb): float(correlation[row[fa], column[fb]]) for fa, fb in pairs}


def _decoder_features(
    a: pl.DataFrame, b: pl.DataFrame, vectors: dict[str, np.ndarray], settings: DiffSettings
) -> pl.DataFrame:
    """Features at the same (layer, position) whose unit decoder directions have cosine ≥ min_cosine."""
    left = a.filter(pl.col("kind") == "feature").select("node_id", "feature_id", "layer", "position")
    right = b.filter(pl.col("kind") == "feature").select("node_id", "feature_id", "layer", "position")
    missing = sorted({f for f in left["feature_id"].to_list() + right["feature_id"].to_list() if f not in vectors})
    if missing:
        raise CircuitDBError(
            f"no decoder vector stored for {missing[0]} (and {len(missing) - 1} more): build feature_vectors"
        )
    pairs = left.join(right, on=["layer", "position"], suffix="_b")
    if pairs.is_empty():
        return pl.DataFrame(schema={"a": pl.String, "b": pl.String, "rule": pl.String, "score": pl.Float64})
    first = np.stack([vectors[f] for f in pairs["feature_id"]])
    second = np.stack([vectors[f] for f in pairs["feature_id_b"]])
    cosine = np.einsum("nd,nd->n", first, second) / np.maximum(
        np.linalg.norm(first, axis=1) * np.linalg.norm(second, axis=1), 1e-12
    )
    candidates = pairs.select(a="node_id", b="node_id_b").with_columns(
        rule=pl.lit("decoder"), score=pl.Series(cosine, dtype=pl.Float64)
    )
    return _one_to_one(candidates.filter(pl.col("score") >= settings.min_cosine))


WORD = re.compile(r"[a-z0-9]+")


def label_words(label: str) -> frozenset[str]:
    return frozenset(WORD.findall(label.lower()))


def _label_features(
    a: pl.DataFrame, b: pl.DataFrame, n_layers: tuple[int, int], settings: DiffSettings
) -> pl.DataFrame:
    """Features at the same position within `depth_band` of each other's relative depth whose labels overlap."""
    left = a.filter(pl.col("kind") == "feature").with_columns(depth=_depth(n_layers[0]))
    right = b.filter(pl.col("kind") == "feature").with_columns(depth=_depth(n_layers[1]))
    pairs = left.join(right, on="position", suffix="_b").filter(
        (pl.col("depth") - pl.col("depth_b")).abs() <= settings.depth_band
    )
    scores = []
    for first, second in pairs.select("label", "label_b").iter_rows():
        words_a, words_b = label_words(first or ""), label_words(second or "")
        union = words_a | words_b
        scores.append(len(words_a & words_b) / len(union) if union else 0.0)
    candidates = pairs.select(a="node_id", b="node_id_b").with_columns(
        rule=pl.lit("label"), score=pl.Series(scores, dtype=pl.Float64)
    )
    return _one_to_one(candidates.filter(pl.col("score") >= settings.min_label_overlap))


def match_nodes(
    a: pl.DataFrame,
    b: pl.DataFrame,
    rule: MatchRule,
    n_layers: tuple[int, int],
    vectors: dict[str, np.ndarray] | None = None,
    settings: DiffSettings = DEFAULT_SETTINGS,
) -> pl.DataFrame:
    """Pairs (a node id, b node id, rule, score) of two graphs' `graph_nodes` rows under `rule`."""
    others = _other_nodes(a, b, n_layers)
    if rule == "identity":
        features = _identity_features(a, b)
    elif rule == "decoder":
        features = _decoder_features(a, b, vectors or {}, settings)
    else:
        features = _label_features(a, b, n_layers, settings)
    return pl.concat([others, features])


class GraphDiff(NamedTuple):
    nodes: pl.DataFrame
    """`graph_diffs` rows: one per node of either graph, with its match on the other side (null: unique)."""
    edges: pl.DataFrame
    """`graph_diff_edges` rows: the edges between matched nodes in either graph, with both weights."""
    document: dict
    """Everything as one JSON document (scores, counts, paths, nodes and edges)."""


def diff_id(a: str, b: str) -> str:
    return f"{a}~{b}"


def diff_graphs(store: Store, slug_a: str, slug_b: str, settings: DiffSettings = DEFAULT_SETTINGS) -> GraphDiff:
    """Diff two stored graphs of one prompt and store it (`graph_diffs`, `graph_diff_edges`, partition
    `A~B`)."""
    diff = compute_diff(store, slug_a, slug_b, settings)
    name = diff_id(slug_a, slug_b)
    write_partition(store, "graph_diffs", name, diff.nodes)
    write_partition(store, "graph_diff_edges", name, diff.edges)
    return diff


def compute_diff(store: Store, slug_a: str, slug_b: str, settings: DiffSettings = DEFAULT_SETTINGS) -> GraphDiff:
    """The diff of two stored graphs of one prompt, written nowhere (the viewer's compare page reads it)."""
    rows = graph_row(store, slug_a), graph_row(store, slug_b)
    rule = match_rule(*rows)
    frames = [read_table(store, "graph_nodes", partitions=[slug]) for slug in (slug_a, slug_b)]
    edges = [
        read_table(store, "graph_edges", ["source", "target", "weight"], partitions=[slug]) for slug in (slug_a, slug_b)
    ]
    n_layers = tuple(_layers(frame) for frame in frames)
    vectors = None
    if rule == "decoder":
        from circuitdb.store.vectors import vectors_of  # LanceDB takes seconds to import: only when needed

        ids = pl.concat([frame["feature_id"] for frame in frames]).drop_nulls().unique().to_list()
        vectors = vectors_of(store, ids)
    pairs = match_nodes(frames[0], frames[1], rule, n_layers, vectors, settings)
    name = diff_id(slug_a, slug_b)
    nodes = _node_rows(name, frames, pairs, rule, len(rows[0]["token_ids"]))
    edge_rows = _edge_rows(name, edges, pairs)
    document = _document(rows, frames, edges, nodes, edge_rows, rule, settings)
    return GraphDiff(nodes, edge_rows, document)


def _layers(nodes: pl.DataFrame) -> int:
    """The model's layer count: its logits sit at layer n_layers (or a feature target's layer; errors bound it)."""
    logits = nodes.filter(pl.col("kind") == "logit")["layer"]
    errors = nodes.filter(pl.col("kind") == "error")["layer"]
    return int(max(logits.max() or 0, (errors.max() or -1) + 1))


def _node_rows(name: str, frames, pairs: pl.DataFrame, rule: MatchRule, n_positions: int) -> pl.DataFrame:
    a, b = frames
    columns = ["node_id", "kind", "feature_id", "layer", "position", "token", "influence", "label"]
    left = a.select(columns).join(pairs, left_on="node_id", right_on="a", how="left")
    # a full join keeps A's nodes (matched or not) and B's unmatched ones in one frame
    joined = left.join(b.select(columns), left_on="b", right_on="node_id", how="full", suffix="_b")
    either = lambda column: pl.coalesce(column, f"{column}_b")  # noqa: E731  A's value, else B's
    rows = joined.select(
        diff=pl.lit(name),
        node_a=pl.col("node_id"),
        node_b=pl.col("node_id_b"),
        kind=either("kind"),
        feature_a=pl.col("feature_id"),
        feature_b=pl.col("feature_id_b"),
        layer=either("layer"),
        position=either("position"),
        token=either("token"),
        match=pl.col("rule"),
        score=pl.col("score"),
        influence_a=pl.col("influence").cast(pl.Float64),
        influence_b=pl.col("influence_b").cast(pl.Float64),
        label_a=pl.col("label"),
        label_b=pl.col("label_b"),
    )
    matched = [(fa, fb) for fa, fb in rows.select("feature_a", "feature_b").iter_rows() if fa and fb]
    correlation = activation_correlation(a, b, n_positions, matched) if rule == "decoder" else {}
    correlations = [correlation.get((fa, fb)) for fa, fb in rows.select("feature_a", "feature_b").iter_rows()]
    rows = rows.with_columns(activation_correlation=pl.Series(correlations, dtype=pl.Float64))
    strongest = pl.max_horizontal(pl.col("influence_a").fill_null(0), pl.col("influence_b").fill_null(0))
    return rows.sort(strongest, descending=True)


def _edge_rows(name: str, edges, pairs: pl.DataFrame) -> pl.DataFrame:
    """Edges whose two ends are matched, keyed by A's node ids, with the weight in each graph (null: absent)."""
    to_a = pairs.select(b="b", a="a")
    first = edges[0].filter(pl.col("source").is_in(pairs["a"].to_list()) & pl.col("target").is_in(pairs["a"].to_list()))
    second = (
        edges[1]
        .join(to_a.rename({"b": "source", "a": "source_a"}), on="source")
        .join(to_a.rename({"b": "target", "a": "target_a"}), on="target")
        .select(source_b="source", target_b="target", source="source_a", target="target_a", weight_b="weight")
    )
    joined = first.rename({"weight": "weight_a"}).join(second, on=["source", "target"], how="full", coalesce=True)
    return joined.select(
        diff=pl.lit(name),
        source_a=pl.col("source"),
        target_a=pl.col("target"),
        source_b=pl.col("source_b"),
        target_b=pl.col("target_b"),
        weight_a=pl.col("weight_a").cast(pl.Float64),
        weight_b=pl.col("weight_b").cast(pl.Float64),
        change=(pl.col("weight_b").fill_null(0) - pl.col("weight_a").fill_null(0)).cast(pl.Float64),
    ).sort(pl.col("change").abs(), descending=True)


def _document(rows, frames, edges, nodes: pl.DataFrame, edge_rows: pl.DataFrame, rule, settings) -> dict:
    """Scores side by side, counts and influence shared, each graph's paths into its top logit, and the rows."""
    sides = []
    for row, frame, edge_frame in zip(rows, frames, edges, strict=True):
        graph = PrunedGraph(frame, edge_frame)
        logits = frame.filter(pl.col("kind") == "logit").sort("activation", descending=True)
        top = logits["node_id"][0]
        paths = [{"nodes": p.nodes, "share": p.share} for p in graph.top_paths(top)]
        sides.append(
            {
                key: row[key]
                for key in ("slug", "prompt", "model", "dictionaries", "replacement_score", "completeness_score")
            }
            | {"top_logit": logits["token"][0], "paths": paths, "nodes": frame.height, "edges": edge_frame.height}
        )
    features = nodes.filter(pl.col("kind") == "feature")
    shared = features.filter(pl.col("node_a").is_not_null() & pl.col("node_b").is_not_null())
    counts = {
        "shared_features": shared.height,
        "only_a": features.filter(pl.col("node_b").is_null()).height,
        "only_b": features.filter(pl.col("node_a").is_null()).height,
        "shared_influence_a": _share(shared["influence_a"], features["influence_a"]),
        "shared_influence_b": _share(shared["influence_b"], features["influence_b"]),
        "shared_edges": edge_rows.filter(pl.col("weight_a").is_not_null() & pl.col("weight_b").is_not_null()).height,
    }
    return {
        "rule": rule,
        "settings": settings._asdict(),
        "a": sides[0],
        "b": sides[1],
        "counts": counts,
        "nodes": nodes.drop("diff").to_dicts(),
        "edges": edge_rows.drop("diff").to_dicts(),
    }


def _share(part: pl.Series, whole: pl.Series) -> float:
    total = float(whole.fill_null(0).sum())
    return float(part.fill_null(0).sum()) / total if total > 0 else 0.0


def page_document(store: Store, slug_a: str, slug_b: str, edges: int = 200) -> dict:
    """What the compare page draws: the diff's document with only the matched pairs of nodes (the page has both
    graphs' nodes already) and the `edges` largest edge changes."""
    diff = compute_diff(store, slug_a, slug_b)
    matched = diff.nodes.filter(pl.col("node_a").is_not_null() & pl.col("node_b").is_not_null())
    pairs = matched.select("node_a", "node_b", "match", "score", "activation_correlation").to_dicts()
    document = {key: value for key, value in diff.document.items() if key not in ("nodes", "edges")}
    return document | {"pairs": pairs, "edges": diff.edges.drop("diff").head(edges).to_dicts()}

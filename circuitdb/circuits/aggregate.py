"""A prompt set's circuit: what recurs in its graphs, computed from the per-graph tables into one partition per
set of `circuit_features`, `circuit_edges` and `circuit_sets`.

Across prompts a node is named by what it is, not where: a feature by its feature_id (its positions kept,
counted back from the prompt's end), an error by its layer, a token by its text, every logit as 'target'.
Within one graph the nodes (and edges) of one name are summed first, so each graph counts once.
"""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl

from circuitdb.circuits.prompt_sets import built_slugs, set_rows
from circuitdb.errors import CircuitDBError
from circuitdb.intervals import interval
from circuitdb.store import Store, read_table, write_partition

NAME = (
    pl.when(pl.col("kind") == "feature")
    .then(pl.col("feature_id"))
    .when(pl.col("kind") == "error")
    .then(pl.format("error {}", pl.col("layer")))
    .when(pl.col("kind") == "token")
    .then(pl.format("token '{}'", pl.col("token")))
    .otherwise(pl.lit("target"))
)
"""A node's name across prompts."""


def aggregate_set(store: Store, name: str) -> dict:
    """Aggregate the set's built graphs into its `circuit_*` partitions; returns its `circuit_sets` row."""
    slugs = built_slugs(store, name)
    if not slugs:
        raise CircuitDBError(f"no graph of prompt set {name!r} is built yet")
    graphs = read_table(store, "graphs", ["slug", "tokens", "replacement_score", "completeness_score"], slugs)
    nodes = read_table(store, "graph_nodes", partitions=slugs)
    edges = read_table(store, "graph_edges", ["slug", "source", "target", "weight"], partitions=slugs)
    features = circuit_features(name, nodes, graphs, _labels(store))
    write_partition(store, "circuit_features", name, features)
    write_partition(store, "circuit_edges", name, circuit_edges(name, nodes, edges))
    replacement, replacement_ci = interval(graphs["replacement_score"].to_list())
    completeness, completeness_ci = interval(graphs["completeness_score"].to_list())
    row = {"prompt_set": name, "prompts": set_rows(store, name).height, "graphs": graphs.height}
    row |= {"replacement": replacement, "replacement_ci95": replacement_ci}
    row |= {"completeness": completeness, "completeness_ci95": completeness_ci, "created_at": datetime.now(UTC)}
    write_partition(store, "circuit_sets", name, pl.DataFrame([row]))
    return row


def _labels(store: Store) -> pl.DataFrame:
    """Each feature's explanation where one is stored, else its heuristic label."""
    labels = read_table(store, "features", ["feature_id", "label"])
    if "explanations" in store.table_names():
        explained = read_table(store, "explanations", ["feature_id", "explanation"]).unique("feature_id", keep="last")
        labels = labels.join(explained, on="feature_id", how="left").select(
            "feature_id", pl.coalesce("explanation", "label").alias("label")
        )
    return labels


def circuit_features(name: str, nodes: pl.DataFrame, graphs: pl.DataFrame, labels: pl.DataFrame) -> pl.DataFrame:
    """Per feature: graphs holding it, its influence (summed over positions in a graph) and largest activation
    averaged over those graphs, its share of each graph's total influence, its positions from the end."""
    ends = graphs.select("slug", (pl.col("tokens").list.len() - 1).alias("end"))
    totals = nodes.group_by("slug").agg(pl.col("influence").cast(pl.Float64).sum().alias("total"))
    per_graph = (
        nodes.filter(pl.col("kind") == "feature")
        .join(ends, on="slug")
        .group_by("slug", "feature_id", "layer")
        .agg(
            pl.col("influence").cast(pl.Float64).sum().alias("influence"),
            pl.col("activation").cast(pl.Float64).max().alias("activation"),
            (pl.col("end") - pl.col("position")).cast(pl.Int32).alias("from_end"),
        )
        .join(totals, on="slug")
    )
    n_graphs = graphs.height
    frame = (
        per_graph.group_by("feature_id", "layer")
        .agg(
            pl.len().cast(pl.Int64).alias("graphs"),
            pl.col("influence").mean().alias("mean_influence"),
            pl.col("influence").max().alias("max_influence"),
            pl.col("activation").mean().alias("mean_activation"),
            (pl.col("influence") / pl.col("total")).mean().alias("target_share"),
            pl.col("from_end")
            .list.explode(keep_nulls=False, empty_as_null=False)
            .unique()
            .sort()
            .alias("positions_from_end"),
        )
        .with_columns(pl.lit(name).alias("prompt_set"), (pl.col("graphs") / n_graphs).alias("graph_share"))
        .join(labels, on="feature_id", how="left")
    )
    columns = ["prompt_set", "feature_id", "layer", "graphs", "graph_share", "mean_influence", "max_influence"]
    columns += ["mean_activation", "target_share", "positions_from_end", "label"]
    return frame.select(columns).sort(["graphs", "mean_influence", "feature_id"], descending=[True, True, False])


def circuit_edges(name: str, nodes: pl.DataFrame, edges: pl.DataFrame) -> pl.DataFrame:
    """Per (source name, target name): graphs holding such an edge, the weight (summed within a graph) averaged
    and summed over graphs, and the share of graphs whose weight has the majority's sign."""
    names = nodes.select("slug", "node_id", NAME.alias("name"))
    per_graph = (
        edges.join(names.rename({"node_id": "source", "name": "source_name"}), on=["slug", "source"])
        .join(names.rename({"node_id": "target", "name": "target_name"}), on=["slug", "target"])
        .group_by("slug", "source_name", "target_name")
        .agg(pl.col("weight").cast(pl.Float64).sum())
    )
    frame = per_graph.group_by("source_name", "target_name").agg(
        pl.len().cast(pl.Int64).alias("graphs"),
        pl.col("weight").mean().alias("mean_weight"),
        pl.col("weight").sum().alias("sum_weight"),
        (pl.col("weight") > 0).sum().alias("positive"),
    )
    agreement = pl.max_horizontal("positive", pl.col("graphs") - pl.col("positive")) / pl.col("graphs")
    return (
        frame.with_columns(pl.lit(name).alias("prompt_set"), agreement.alias("sign_agreement"))
        .rename({"source_name": "source", "target_name": "target"})
        .select("prompt_set", "source", "target", "graphs", "mean_weight", "sum_weight", "sign_agreement")
        .sort("target", "source")  # row groups by target: "what feeds X across the set" reads one or two
    )

"""One prompt set under two dictionary sets (or two models): each prompt's two graphs diffed (`diff.py`), then
what recurs summed over the prompts. Per feature of either side: in how many graphs it is, in how many of those
it has a match on the other side, and its most frequent match; per top path into the target (nodes named across
prompts as in `aggregate.py`): in how many graphs it is a top path, and in how many every node of it is matched.

A feature in many graphs of one side and matched in few is what the other dictionary set does not have.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import NamedTuple

import polars as pl

from circuitdb.circuits.aggregate import NAME
from circuitdb.circuits.diff import DEFAULT_SETTINGS, DiffSettings, diff_graphs, diff_id
from circuitdb.circuits.prompt_sets import set_rows
from circuitdb.errors import CircuitDBError
from circuitdb.store import Store, read_table, write_partition

SIDES = ("a", "b")


class SetDiff(NamedTuple):
    features: pl.DataFrame
    """`circuit_diffs` rows: one per (side, feature)."""
    paths: pl.DataFrame
    """`circuit_diff_paths` rows: one per (side, named top path)."""
    summary: dict
    """Sets, prompts paired, the rule, mean shared influence on each side."""


def paired_slugs(store: Store, set_a: str, set_b: str) -> list[tuple[str, str]]:
    """(graph of A, graph of B) per prompt both sets hold with the same target, both graphs built."""
    rows = [set_rows(store, name) for name in (set_a, set_b)]
    for name, frame in zip((set_a, set_b), rows, strict=True):
        if frame.is_empty():
            raise CircuitDBError(f"no prompt set {name!r}")
    joined = rows[0].join(rows[1], on=["prompt", "target"], suffix="_b").drop_nulls(["slug", "slug_b"])
    if joined.is_empty():
        raise CircuitDBError(f"sets {set_a!r} and {set_b!r} share no prompt (with one target) built in both")
    return list(joined.sort("position").select("slug", "slug_b").iter_rows())


def diff_sets(
    store: Store, set_a: str, set_b: str, settings: DiffSettings = DEFAULT_SETTINGS, progress=None
) -> SetDiff:
    """Diff every paired prompt's graphs (stored as graph diffs too), then aggregate into `circuit_diffs` and
    `circuit_diff_paths` (partition `A~B`)."""
    pairs = paired_slugs(store, set_a, set_b)
    name = diff_id(set_a, set_b)
    node_rows, path_rows, rules, shared = [], [], set(), {"a": [], "b": []}
    for slug_a, slug_b in pairs:
        diff = diff_graphs(store, slug_a, slug_b, settings)
        rules.add(diff.document["rule"])
        node_rows.append(diff.nodes.with_columns(pair=pl.lit(slug_a)))
        path_rows.extend(_named_paths(store, diff, (slug_a, slug_b)))
        for side in SIDES:
            shared[side].append(diff.document["counts"][f"shared_influence_{side}"])
        if progress is not None:
            progress(slug_a, slug_b)
    nodes = pl.concat(node_rows)
    features = pl.concat([_side_features(name, nodes, side) for side in SIDES])
    paths = _path_counts(name, pl.DataFrame(path_rows, orient="row", schema=["side", "pair", "path", "matched"]))
    write_partition(store, "circuit_diffs", name, features)
    write_partition(store, "circuit_diff_paths", name, paths)
    summary = {"a": set_a, "b": set_b, "prompts": len(pairs), "rule": " + ".join(sorted(rules))}
    summary |= {f"shared_influence_{side}": sum(shared[side]) / len(pairs) for side in SIDES}
    return SetDiff(features, paths, summary | {"created_at": datetime.now(UTC).isoformat()})


def _side_features(name: str, nodes: pl.DataFrame, side: str) -> pl.DataFrame:
    """Per feature of one side: graphs holding it, graphs where it is matched, its most frequent match."""
    other = "b" if side == "a" else "a"
    mine = nodes.filter(pl.col(f"feature_{side}").is_not_null())
    per_graph = mine.group_by("pair", f"feature_{side}").agg(
        pl.col(f"feature_{other}").drop_nulls().first().alias("match"),
        pl.col("score").max(),
        pl.col(f"influence_{side}").sum().alias("influence"),
        pl.col("layer").first(),
    )
    counted = per_graph.group_by(f"feature_{side}").agg(
        pl.len().cast(pl.Int64).alias("graphs"),
        pl.col("match").is_not_null().sum().cast(pl.Int64).alias("matched"),
        pl.col("match").drop_nulls().mode().sort().first().alias("match"),
        pl.col("score").mean().alias("mean_score"),
        pl.col("influence").mean().alias("mean_influence"),
        pl.col("layer").first(),
    )
    return counted.select(
        diff=pl.lit(name),
        side=pl.lit(side),
        feature_id=pl.col(f"feature_{side}"),
        layer=pl.col("layer"),
        graphs=pl.col("graphs"),
        matched=pl.col("matched"),
        unmatched=pl.col("graphs") - pl.col("matched"),
        match=pl.col("match"),
        mean_score=pl.col("mean_score"),
        mean_influence=pl.col("mean_influence"),
    ).sort(["unmatched", "graphs", "mean_influence"], descending=True)


def _named_paths(store: Store, diff, slugs: tuple[str, str]) -> list[tuple[str, str, str, bool]]:
    """Each side's top paths as (side, pair, 'name → name → target', every node matched)."""
    matched = {
        side: set(diff.nodes.filter(pl.col("node_a").is_not_null() & pl.col("node_b").is_not_null())[f"node_{side}"])
        for side in SIDES
    }
    rows = []
    for side, slug in zip(SIDES, slugs, strict=True):
        nodes = read_table(store, "graph_nodes", ["kind", "node_id", "feature_id", "layer", "token"], [slug])
        names = dict(nodes.select("node_id", NAME.alias("name")).iter_rows())
        for path in diff.document[side]["paths"]:
            named = " → ".join(names[node_id] for node_id in path["nodes"])
            rows.append((side, slugs[0], named, all(node_id in matched[side] for node_id in path["nodes"])))
    return rows


def _path_counts(name: str, paths: pl.DataFrame) -> pl.DataFrame:
    """Per (side, named path): graphs where it is a top path, and where all its nodes are matched."""
    per_graph = paths.group_by("side", "pair", "path").agg(pl.col("matched").all())
    return (
        per_graph.group_by("side", "path")
        .agg(pl.len().cast(pl.Int64).alias("graphs"), pl.col("matched").sum().cast(pl.Int64).alias("matched"))
        .select(pl.lit(name).alias("diff"), "side", "path", "graphs", "matched")
        .sort(["side", "graphs", "path"], descending=[False, True, False])
    )

"""The questions the CLI asks a built store, as plain calls: each checks what it is given, queries the
tables read-only and returns rows; the CLI parses flags, calls one of these and renders the answer."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import polars as pl

from circuitdb.errors import CircuitDBError
from circuitdb.store import TABLES, Store, count_rows, parse_feature_id, read_table, sql_literal
from circuitdb.store.graphs import graph_json_path, graph_row
from circuitdb.store.integrity import verify
from circuitdb.store.layout import atomic_write_bytes
from circuitdb.store.sweeps import summary
from query.engine import QueryResult, run_sql

NOT_BUILT = {
    "features": "no feature statistics in the store yet; run `circuitdb build` (asset feature_stats)",
    "graphs": 'no attribution graphs in the store yet; run `circuitdb graph build "prompt"`',
}


def require(store: Store, table: str) -> Store:
    """The store, or one line saying how to build `table` when it has none yet."""
    if table not in store.table_names():
        raise CircuitDBError(NOT_BUILT[table])
    return store


class TableColumns(NamedTuple):
    name: str
    rows: int
    about: str
    """The table's documented description."""
    columns: list[tuple[str, str, str]]
    """(column, DuckDB type, documented meaning)."""


class TableListing(NamedTuple):
    tables: list[TableColumns]
    damaged: list[str]
    """One line per table whose files could not be read."""


def table_listing(store: Store) -> TableListing:
    """Every table with rows, its columns and their documented meanings; damaged tables named apart."""
    tables, damaged = [], []
    for table in store.table_names():
        try:
            count = count_rows(store, table)
            described = run_sql(store, f'DESCRIBE "{table}"').rows
        except CircuitDBError as exc:
            damaged.append(str(exc))
            continue
        schema = TABLES.get(table)
        documented = schema.columns if schema else {}
        columns = [(name, dtype, documented[name][1] if name in documented else "") for name, dtype, *_ in described]
        tables.append(TableColumns(table, count, schema.description if schema else "", columns))
    return TableListing(tables, damaged)


class StoreCheck(NamedTuple):
    problems: QueryResult
    """(file, problem, what to rebuild) of every file that does not verify."""
    n_files: int
    damaged: int
    """Files damaged or missing (the others listed only lack a checksum)."""


def store_check(store: Store) -> StoreCheck:
    """Every file of the store against the checksum recorded when it was written (on object storage every
    file is downloaded first, to hash it)."""
    from circuitdb.store.integrity import check_files, rebuild_target

    store.pull(large=True)
    report = check_files(store.root, progress=True)
    rows = [
        (str(p.path.relative_to(store.root)), p.problem, rebuild_target(store.root, p.path)) for p in report.problems
    ]
    damaged = sum(not p.problem.startswith("no checksum") for p in report.problems)
    return StoreCheck(QueryResult(["file", "problem", "rebuild"], [], rows), report.n_files, damaged)


def _dicts(result: QueryResult) -> list[dict]:
    return [dict(zip(result.columns, row, strict=True)) for row in result.rows]


def feature_page(store: Store, feature_id: str, n_top: int) -> tuple[dict, list[dict]]:
    """A feature's `features` row and its exemplars: the `n_top` strongest, then one per quantile group."""
    parse_feature_id(feature_id)
    require(store, "features")
    found = _dicts(run_sql(store, f"SELECT * FROM features WHERE feature_id = {sql_literal(feature_id)}"))
    if not found:
        raise CircuitDBError(f"unknown feature {feature_id!r}: no such dictionary, layer or index in the store")
    query = (
        f"SELECT * FROM exemplars WHERE feature_id = {sql_literal(feature_id)} "
        f"AND ((kind = 'top' AND rank < {int(n_top)}) OR (kind = 'quantile' AND rank = 0)) "
        'ORDER BY kind DESC, "group" DESC, rank'
    )
    return found[0] | _explanation(store, feature_id), _dicts(run_sql(store, query))


def _explanation(store: Store, feature_id: str) -> dict:
    """The feature's latest explanation, its explainer and (when scored) detection and fuzzing accuracy; empty
    when none was written (the heuristic `label` stands alone)."""
    if "explanations" not in store.table_names():
        return {}
    latest = f"SELECT explanation, explainer FROM explanations WHERE feature_id = {sql_literal(feature_id)} "
    found = _dicts(run_sql(store, latest + "ORDER BY created_at DESC LIMIT 1"))
    if not found:
        return {}
    explained = found[0]
    if "explanation_scores" in store.table_names():
        scores = run_sql(
            store,
            f"SELECT method, accuracy FROM explanation_scores WHERE feature_id = {sql_literal(feature_id)} "
            f"AND explainer = {sql_literal(explained['explainer'])} ORDER BY created_at",
        )
        explained |= {method: accuracy for method, accuracy in scores.rows}
    return explained


def graphs_with(store: Store, feature_id: str) -> list[str]:
    """The graphs whose pruned nodes include `feature_id`, newest first."""
    if "graphs" not in store.table_names():
        return []
    query = (
        "SELECT g.slug FROM graphs g WHERE g.slug IN (SELECT slug FROM graph_nodes "
        f"WHERE feature_id = {sql_literal(feature_id)}) ORDER BY g.created_at DESC"
    )
    return [row[0] for row in run_sql(store, query).rows]


def top_features(store: Store, layer: int | None, by: str, k: int) -> QueryResult:
    """The `k` live features of highest `by` (density or max_act), of one layer or all."""
    if by not in ("density", "max_act"):
        raise CircuitDBError(f"--by must be density or max_act, got {by!r}")
    require(store, "features")
    if layer is not None:
        _check_layer(store, layer)
    where = "NOT dead" + (f" AND layer = {int(layer)}" if layer is not None else "")
    return run_sql(
        store,
        f"SELECT feature_id, density, max_act, label FROM features WHERE {where} ORDER BY {by} DESC LIMIT {int(k)}",
    )


def _check_layer(store: Store, layer: int) -> None:
    found = run_sql(
        store, f"SELECT min(layer), max(layer), count(*) FILTER (WHERE layer = {int(layer)}) FROM dictionaries"
    )
    low, high, count = found.rows[0]
    if not count:
        raise CircuitDBError(f"no dictionary at layer {layer}: the store has layers {low}-{high}")


def graph_listing(store: Store) -> QueryResult:
    require(store, "graphs")
    return run_sql(
        store,
        "SELECT slug, n_active_features AS active, n_nodes_pruned AS nodes, n_edges_pruned AS edges, "
        "round(replacement_score, 3) AS replacement, round(completeness_score, 3) AS completeness, "
        "top_logits[1] AS top_logit FROM graphs ORDER BY created_at",
    )


def node_edges(store: Store, slug: str, source: str | None, target: str | None, k: int) -> QueryResult:
    """The `k` strongest edges leaving `source` or entering `target`, with the other end's kind and label."""
    if (source is None) == (target is None):
        raise CircuitDBError("give exactly one of --from NODE or --to NODE")
    graph_row(require(store, "graphs"), slug)
    node, near, far = (source, "source", "target") if source is not None else (target, "target", "source")
    known = run_sql(
        store, f"SELECT 1 FROM graph_nodes WHERE slug = {sql_literal(slug)} AND node_id = {sql_literal(node)}"
    )
    if not known.rows:
        raise CircuitDBError(f"graph {slug} has no node {node!r} (after pruning); see `graph show {slug}`")
    return run_sql(
        store,
        f"SELECT e.{far} AS node, n.kind, n.token, e.weight, n.label FROM graph_edges e "
        f"JOIN graph_nodes n ON n.slug = e.slug AND n.node_id = e.{far} "
        f"WHERE e.slug = {sql_literal(slug)} AND e.{near} = {sql_literal(node)} "
        f"ORDER BY abs(e.weight) DESC LIMIT {int(k)}",
    )


def check_output_file(out: Path) -> None:
    """One line, before any work, when `out` cannot be written as a file."""
    if out.is_dir():
        raise CircuitDBError(f"{out} is a folder; give the file to write")
    if not out.parent.is_dir():
        raise CircuitDBError(f"folder {out.parent} does not exist")


def export_graph_json(store: Store, slug: str, out: Path) -> None:
    """Write the graph's circuit-tracer JSON to `out` (a file; whole or not at all): the stored file once it
    verifies, or, for a graph built without one (prompt sets keep only rows), made from its rows."""
    import json

    from circuitdb.circuits.circuit_tracer_json import circuit_tracer_json

    row = graph_row(require(store, "graphs"), slug)
    source = graph_json_path(store, slug)
    check_output_file(out)
    if store.fetch(source):
        verify(store.root, source)
        atomic_write_bytes(out, source.read_bytes(), checksum=False)
        return
    nodes = read_table(store, "graph_nodes", partitions=[slug])
    edges = read_table(store, "graph_edges", partitions=[slug])
    threshold = json.loads(row["settings"])["node_threshold"]
    atomic_write_bytes(out, json.dumps(circuit_tracer_json(row, nodes, edges, threshold)).encode(), checksum=False)


def dictionary_metrics(store: Store) -> list[dict]:
    """Each stored dictionary's held-out metrics and explanation scores, by set and layer (none before the
    first build)."""
    if "dictionaries" not in store.table_names():
        return []
    columns = ["name", "kind", "layer", "n_latents", "fvu", "fvu_excl_pos0", "l0", "dead_frac", "delta_ce"]
    scores = ["explained_features", "detection_acc", "fuzzing_acc"]
    return read_table(store, "dictionaries", columns + scores).sort("name", "layer").to_dicts()


def sweep_summaries(store: Store) -> list[dict]:
    """Each swept (dictionary, layer, with or without skip): per k the mean ± 95% interval of its held-out
    metrics over seeds."""
    if "sweeps" not in store.table_names():
        return []
    rows = read_table(store, "sweeps")
    out = []
    for (dictionary, layer, skip), group in sorted(rows.group_by("dictionary", "layer", "skip"), key=lambda i: i[0]):
        out.append({"dictionary": dictionary, "layer": layer, "skip": skip, "points": summary(group).to_dicts()})
    return out


def explanation_targets(
    store: Store, dictionary: str, feature_id: str | None, layer: int | None, top: int
) -> list[str]:
    """The features `feature explain` works on: one id, or the `top` densest live features of `layer`."""
    from circuitdb.explanations.explain import densest_live

    if (feature_id is None) == (layer is None):
        raise CircuitDBError("give a feature id or --layer (with --top), not both")
    if feature_id is not None:
        parse_feature_id(feature_id)
        return [feature_id]
    require(store, "features")
    _check_layer(store, layer)
    return densest_live(store, dictionary, layer, top)


def explained_table(explanations: pl.DataFrame, scores: pl.DataFrame | None) -> QueryResult:
    """One row per feature: its explanation and, when scored, detection and fuzzing accuracy."""
    table = explanations.select("feature_id", "explanation")
    for method in ("detection", "fuzzing"):
        if scores is not None and scores.height:
            picked = scores.filter(pl.col("method") == method).select("feature_id", pl.col("accuracy").alias(method))
            table = table.join(picked, on="feature_id", how="left")
    return QueryResult(table.columns, [], table.rows())


def set_circuit(store: Store, name: str, k: int) -> tuple[dict, QueryResult, QueryResult]:
    """A prompt set's `circuit_sets` row, its `k` most recurring features and its `k` strongest aggregated edges
    into the target or into those features."""
    summary = read_table(store, "circuit_sets", partitions=[name])
    if summary.is_empty():
        raise CircuitDBError(f"no aggregated prompt set {name!r}")
    where = f"prompt_set = {sql_literal(name)}"
    features = run_sql(
        store,
        "SELECT feature_id, graphs, round(graph_share, 3) AS share, round(mean_influence, 4) AS influence, "
        f"positions_from_end AS from_end, label FROM circuit_features WHERE {where} "
        f"ORDER BY graphs DESC, mean_influence DESC LIMIT {int(k)}",
    )
    top = ", ".join(sql_literal(row[0]) for row in features.rows[:5]) or "''"
    edges = run_sql(
        store,
        "SELECT source, target, graphs, round(mean_weight, 4) AS mean_weight, round(sign_agreement, 2) AS agree "
        f"FROM circuit_edges WHERE {where} AND (target = 'target' OR target IN ({top})) "
        f"ORDER BY graphs DESC, abs(sum_weight) DESC LIMIT {int(k)}",
    )
    return summary.row(0, named=True), features, edges

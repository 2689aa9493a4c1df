"""Render query results as a terminal table, CSV or JSON."""

from __future__ import annotations

import csv
import json
import sys
from enum import StrEnum
from typing import TYPE_CHECKING

import polars as pl
from rich.console import Console
from rich.table import Table
from rich.text import Text

from query.engine import QueryResult

if TYPE_CHECKING:
    import dagster as dg

    from circuitdb.store import Store
    from query.questions import StoreCheck, TableListing


class OutputFormat(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


def render(result: QueryResult | pl.DataFrame, fmt: OutputFormat, title: str | None = None) -> None:
    """Rows as a terminal table, CSV or JSON records."""
    if isinstance(result, pl.DataFrame):
        result = QueryResult(result.columns, [], result.rows())
    if fmt is OutputFormat.json:
        records = [dict(zip(result.columns, row, strict=True)) for row in result.rows]
        sys.stdout.write(json.dumps(records, default=str) + "\n")
    elif fmt is OutputFormat.csv:
        writer = csv.writer(sys.stdout)
        writer.writerow(result.columns)
        writer.writerows(result.rows)
    else:
        table = Table(title=title, show_lines=False)
        for column in result.columns:
            table.add_column(column, overflow="fold")
        for row in result.rows:
            table.add_row(*(Text(_cell(v)) for v in row))  # cells are text: "[x]" is not markup
        Console().print(table)


def _cell(value: object) -> str:
    if value is None:
        return "∅"
    if isinstance(value, float):
        return f"{value:.6g}"
    text = str(value)
    return text if len(text) <= 200 else text[:197] + "..."


SPARK = "▁▂▃▄▅▆▇█"


def sparkline(counts: list[int]) -> str:
    """Histogram as one line of block characters (log-scaled so rare high bins stay visible)."""
    import math

    top = max((math.log1p(c) for c in counts), default=0) or 1
    return "".join(SPARK[min(7, int(math.log1p(c) / top * 7))] if c else " " for c in counts)


def highlighted(tokens: list[str], values: list[float], peak: int, scale: float) -> Text:
    """Tokens with a background whose intensity is the activation; the peak token underlined."""
    text = Text()
    for i, (token, value) in enumerate(zip(tokens, values, strict=True)):
        shade = int(255 - 175 * min(1.0, max(0.0, value / scale))) if value > 0 else 255
        style = f"black on rgb(255,{shade},{shade})" if value > 0 else ""
        text.append(token.replace("\n", "⏎"), style=style + (" underline bold" if i == peak else ""))
    return text


def render_feature(feature: dict, exemplars: list[dict]) -> None:
    """A readable page for one feature: stats, histogram, logits, neighbours, exemplars."""
    console = Console()
    console.print(f"[bold]{feature['feature_id']}[/bold]  {feature['label']}")
    if feature.get("explanation"):
        scored = ", ".join(f"{m} {feature[m]:.2f}" for m in ("detection", "fuzzing") if m in feature)
        console.print(
            f"explanation: {feature['explanation']}  ({feature['explainer']}{'; ' + scored if scored else ''})"
        )
    console.print(
        f"density {feature['density']:.4%}   max {feature['max_act']:.3g}   mean {feature['mean_act']:.3g}"
        + ("   [red]dead[/red]" if feature["dead"] else "")
    )
    console.print(f"activations (0 → {feature['max_act']:.3g}): |{sparkline(feature['histogram'])}|")
    promote = ", ".join(
        f"{t!r} {v:+.2f}" for t, v in zip(feature["top_logits"], feature["top_logit_values"], strict=True)
    )
    suppress = ", ".join(
        f"{t!r} {v:+.2f}" for t, v in zip(feature["bottom_logits"], feature["bottom_logit_values"], strict=True)
    )
    console.print(f"promotes: {promote}")
    console.print(f"suppresses: {suppress}")
    neighbours = ", ".join(
        f"{n} ({c:.2f})" for n, c in zip(feature["neighbours"], feature["neighbour_cosines"], strict=True)
    )
    console.print(f"decoder neighbours: {neighbours}")
    for kind in ("top", "quantile"):
        rows = [e for e in exemplars if e["kind"] == kind]
        if rows:
            console.print(f"\n[bold]{kind} exemplars[/bold]")
        for row in rows:
            prefix = f"{row['activation']:7.3f} " + (f"q{row['group']} " if kind == "quantile" else "")
            console.print(
                Text(prefix) + highlighted(row["tokens"], row["values"], row["peak_offset"], feature["max_act"])
            )


def _describe(node: dict) -> str:
    where = f"@{node['position']} {node['token']!r}"
    if node["kind"] == "feature":
        return f"{node['feature_id']} {where}  {node['label']}"
    if node["kind"] == "error":
        return f"MLP error, layer {node['layer']} {where}"
    if node["kind"] == "token":
        return f"token {where}"
    if node["kind"] == "supernode":
        return f"■ {node['label']} {where}"
    return node["label"]


def _shortened(prompt: str, keep: int = 40) -> str:
    """A long prompt as its start … its end (the end is what the graph explains), in one line."""
    if len(prompt) <= 2 * keep:
        return repr(prompt)
    return f"{prompt[:keep]!r} … {prompt[-keep:]!r} ({len(prompt)} characters)"


def render_graph_tree(
    graph: dict, nodes: list[dict], edges: list[tuple], supernodes: list[dict], depth: int, width: int
) -> None:
    """The top logit, its `width` strongest inputs, theirs, ... down `depth` levels (pruned graph), after the
    supernodes grouped in the viewer.

    Error nodes are not expanded (they have no inputs); each level says what share of its input they carry.
    """
    console = Console()
    console.print(f"[bold]{graph['slug']}[/bold]  {_shortened(graph['prompt'])}")
    console.print(f"target: {graph.get('target') or 'top logits'}", highlight=False, markup=False)
    console.print(
        f"{graph['n_nodes_pruned']} nodes, {graph['n_edges_pruned']} edges kept of {graph['n_nodes']} nodes; "
        f"replacement score {graph['replacement_score']:.3f}, completeness {graph['completeness_score']:.3f}"
    )
    for group in supernodes:
        console.print(f"supernode {group['name']}: {', '.join(group['node_ids'])}", highlight=False, markup=False)
    by_id = {node["node_id"]: node for node in nodes}
    incoming: dict[str, list[tuple[float, str]]] = {}
    for source, target, weight in edges:
        incoming.setdefault(target, []).append((weight, source))
    logits = sorted((n for n in nodes if n["kind"] == "logit"), key=lambda n: -n["activation"])
    if not logits:
        console.print("no logit node survived pruning")
        return

    def walk(node_id: str, level: int, prefix: str) -> None:
        if level == depth:
            return
        inputs = incoming.get(node_id, [])
        explained = [e for e in inputs if by_id[e[1]]["kind"] != "error"]
        strongest = sorted(explained, key=lambda e: -abs(e[0]))[:width]
        error_share = 1 - sum(abs(w) for w, _ in explained) / max(sum(abs(w) for w, _ in inputs), 1e-30)
        for i, (weight, source) in enumerate(strongest):
            last = i == len(strongest) - 1
            line = f"{prefix}{'└─' if last else '├─'} {weight:+.3g}  {_describe(by_id[source])}"
            if i == 0:
                line += f"   (errors: {error_share:.0%} of the input)"
            console.print(line, highlight=False, markup=False)
            walk(source, level + 1, prefix + ("   " if last else "│  "))

    console.print(_describe(logits[0]), style="bold")
    walk(logits[0]["node_id"], 0, "")


def render_tables(listing: TableListing, fmt: OutputFormat) -> None:
    """Per table its columns with their meanings (a terminal table each), or one flat listing as CSV/JSON."""
    if fmt is not OutputFormat.table:
        flat = [(t.name, t.rows, *column) for t in listing.tables for column in t.columns]
        render(QueryResult(["table", "rows", "column", "type", "meaning"], [], flat), fmt)
        return
    for t in listing.tables:
        render(
            QueryResult(["column", "type", "meaning"], [], t.columns), fmt, title=f"{t.name}  ({t.rows} rows) {t.about}"
        )


def render_build(store: Store, checks: list[dg.AssetCheckEvaluation]) -> None:
    """Where the store is, its tables' row counts, and the asset checks (failed ones on stderr)."""
    from circuitdb.store import count_rows

    print(f"store ready at {store.location}")
    for table in store.table_names():
        print(f"  {table}: {count_rows(store, table)} rows")
    failed = [c for c in checks if not c.passed]
    print(f"asset checks: {len(checks) - len(failed)} passed, {len(failed)} failed")
    for check in failed:
        details = ", ".join(f"{k}={v.value}" for k, v in check.metadata.items())
        print(f"  failed: {check.asset_key.to_user_string()} {check.check_name} ({details})", file=sys.stderr)


GRAPH_FIELDS = ["slug", "target", "n_active_features", "n_nodes", "n_nodes_pruned", "n_edges_pruned"]
GRAPH_FIELDS += ["replacement_score", "completeness_score", "seconds"]


def render_graph_row(row: dict, fmt: OutputFormat) -> None:
    """A built graph's summary: field/value rows, or one JSON line with its top logits."""
    if fmt is OutputFormat.table:
        render(QueryResult(["field", "value"], [], [(k, row[k]) for k in GRAPH_FIELDS]), fmt)
    else:
        print(json.dumps({k: row[k] for k in GRAPH_FIELDS} | {"top_logits": row["top_logits"]}))


def render_steering(row: dict, changes: list[tuple], fmt: OutputFormat) -> None:
    """How the next-token prediction moved (and what was generated), or the `interventions` row as JSON."""
    if fmt is not OutputFormat.table:
        print(json.dumps({k: v for k, v in row.items() if k != "created_at"}))
        return
    print(f"top token: {row['top_token_before']!r} → {row['top_token_after']!r}")
    if row["generated"]:
        print(f"continuation while steering: {row['generated']!r}")
    render(QueryResult(["token", "p before", "p after", "change"], [], changes), fmt)


def render_sweep(points: pl.DataFrame, explained: bool, fmt: OutputFormat) -> None:
    """Per (skip, k): the mean ± 95% interval over seeds of the held-out metrics (and explanation scores)."""
    from circuitdb.store.sweeps import mean_and_interval, summary

    table = summary(points)
    if fmt is not OutputFormat.table:
        render(table, fmt)
        return
    shown = ["fvu_excl_pos0", "delta_ce", "kl"] + (["detection_acc", "fuzzing_acc"] if explained else [])
    rows = [
        (
            "yes" if r["skip"] else "no",
            r["k"],
            r["seeds"],
            *(mean_and_interval(r, m) for m in shown),
            f"{r['l0']:.1f}",
            f"{r['dead_frac']:.3f}",
        )
        for r in table.iter_rows(named=True)
    ]
    render(QueryResult(["skip", "k", "seeds", *shown, "l0", "dead_frac"], [], rows), fmt)


def render_check(report: StoreCheck, fmt: OutputFormat) -> None:
    """The files that do not verify, then a count on stderr."""
    if report.problems.rows:
        render(report.problems, fmt)
    unchecked = len(report.problems.rows) - report.damaged
    print(
        f"{report.n_files} files checked: {report.damaged} damaged or missing, {unchecked} without a checksum",
        file=sys.stderr,
    )


def render_graph_diff(document: dict, top: int, fmt: OutputFormat) -> None:
    """A graph diff: scores side by side, counts, each graph's strongest unique features, the largest edge changes
    between shared nodes and each graph's paths into its top logit; or the whole document as one JSON line."""
    if fmt is not OutputFormat.table:
        print(json.dumps(document, default=str))
        return
    a, b, counts = document["a"], document["b"], document["counts"]
    rows = [
        (key, a[key], b[key]) for key in ("slug", "model", "dictionaries", "replacement_score", "completeness_score")
    ]
    rows += [
        ("top logit", a["top_logit"], b["top_logit"]),
        ("nodes / edges", f"{a['nodes']} / {a['edges']}", f"{b['nodes']} / {b['edges']}"),
    ]
    render(QueryResult(["", "A", "B"], [], rows), fmt, title=f"graph diff (nodes matched by {document['rule']})")
    print(
        f"features: {counts['shared_features']} shared (carrying {counts['shared_influence_a']:.1%} of A's feature "
        f"influence, {counts['shared_influence_b']:.1%} of B's), {counts['only_a']} only in A, {counts['only_b']} only "
        f"in B; {counts['shared_edges']} edges in both"
    )
    nodes = document["nodes"]
    for side, other, title in (("a", "b", "only in A"), ("b", "a", "only in B")):
        unique = [n for n in nodes if n["kind"] == "feature" and n[f"node_{other}"] is None][:top]
        table = [
            (n[f"feature_{side}"], n["position"], n["token"], round(n[f"influence_{side}"], 4), n[f"label_{side}"])
            for n in unique
        ]
        render(QueryResult(["feature", "position", "token", "influence", "label"], [], table), fmt, title=title)
    changed = [
        (e["source_a"], e["target_a"], e["weight_a"], e["weight_b"], e["change"]) for e in document["edges"][:top]
    ]
    render(
        QueryResult(["source (A)", "target (A)", "weight A", "weight B", "change"], [], changed),
        fmt,
        title="edge changes",
    )
    for name, side in (("A", a), ("B", b)):
        for path in side["paths"][:3]:
            print(f"{name} path into {side['top_logit']!r} ({path['share']:.3g}): {' → '.join(path['nodes'])}")


def render_circuit(summary: dict, features: QueryResult, edges: QueryResult, fmt: OutputFormat) -> None:
    """A prompt set's scores, its recurring features and the aggregated edges into its target and top features
    (tables), or one JSON line holding all three."""
    if fmt is OutputFormat.json:
        records = {
            name: [dict(zip(q.columns, r, strict=True)) for r in q.rows]
            for name, q in (("features", features), ("edges", edges))
        }
        print(json.dumps({"set": summary} | records, default=str))
        return
    print(
        f"prompt set {summary['prompt_set']}: {summary['graphs']} of {summary['prompts']} graphs built; replacement "
        f"{summary['replacement']:.3f} ± {summary['replacement_ci95']:.3f}, completeness "
        f"{summary['completeness']:.3f} ± {summary['completeness_ci95']:.3f} (95% intervals)"
    )
    render(features, fmt, title="recurring features")
    render(edges, fmt, title="edges into the target and the top features")


def render_ablation(result, fmt: OutputFormat) -> None:
    """The circuit's effect beside the random control's: mean change of the target (probability and logit, 95%
    intervals) and the share of prompts whose top token flipped."""
    rows = [
        (
            arm,
            len(effect.features),
            effect.prompts,
            f"{effect.probability_change:+.4f} ± {effect.probability_ci95:.4f}",
            f"{effect.logit_change:+.3f} ± {effect.logit_ci95:.3f}",
            f"{effect.flipped:.2f}",
        )
        for arm, effect in (("circuit", result.circuit), ("random control", result.control))
    ]
    columns = ["features", "n", "prompts", "target p change", "target logit change", "flipped"]
    if fmt is OutputFormat.json:
        print(
            json.dumps(
                {"run_id": result.run_id, "circuit": result.circuit._asdict(), "control": result.control._asdict()}
            )
        )
        return
    render(QueryResult(columns, [], rows), fmt, title=f"ablation run {result.run_id} (interventions table)")
    for arm, effect in (("circuit", result.circuit), ("random control", result.control)):
        if effect.diverged:
            print(
                f"{arm}: {effect.diverged} prompts left out, their logits not finite under the intervention "
                "(frozen norm scales let it grow through later layers): --live runs the model as it is"
            )


def render_set_supernodes(validated: list, fmt: OutputFormat) -> None:
    """Each validated group of a prompt set: members, where, its effect and the random groups' (mean ± 95%
    interval over the prompts), interchangeability, whether it was saved."""
    rows = [
        (
            v.name,
            len(v.group.node_ids),
            v.group.position,
            v.prompts,
            f"{v.effect:+.3f} ± {v.effect_ci95:.3f}",
            f"{v.control:.3f} ± {v.control_ci95:.3f}",
            round(v.interchangeability, 3),
            v.passed,
        )
        for v in validated
    ]
    columns = ["name", "members", "from_end", "prompts", "target logit change", "random groups", "interchangeable"]
    render(QueryResult([*columns, "saved"], [], rows), fmt, title="automatic supernodes (saved: circuit_supernodes)")


def render_set_diff(diff, top: int, fmt: OutputFormat) -> None:
    """A prompt set under two dictionary sets: per side, the recurring features the other side does not match
    and the recurring top paths, with counts; or all of it as one JSON line."""
    if fmt is OutputFormat.json:
        features, paths = diff.features.to_dicts(), diff.paths.to_dicts()
        print(json.dumps({"summary": diff.summary, "features": features, "paths": paths}, default=str))
        return
    s = diff.summary
    print(
        f"{s['a']} (A) vs {s['b']} (B): {s['prompts']} prompts, nodes matched by {s['rule']}; shared features carry "
        f"{s['shared_influence_a']:.1%} of A's feature influence and {s['shared_influence_b']:.1%} of B's (mean)"
    )
    for side, title in (("a", "recurring in A, unmatched in B"), ("b", "recurring in B, unmatched in A")):
        rows = diff.features.filter((pl.col("side") == side) & (pl.col("unmatched") > 0)).head(top)
        columns = ["feature_id", "layer", "graphs", "matched", "match", "mean_influence"]
        render(rows.select(columns), fmt, title=title)
    for side, name in (("a", "A"), ("b", "B")):
        rows = diff.paths.filter(pl.col("side") == side).head(top).select("path", "graphs", "matched")
        render(rows, fmt, title=f"top paths of {name} (matched: every node has a match in the other graph)")

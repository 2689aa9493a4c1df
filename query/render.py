"""Render query results as a terminal table, CSV or JSON."""

from __future__ import annotations

import csv
import json
import sys
from enum import StrEnum

from rich.console import Console
from rich.table import Table
from rich.text import Text

from query.engine import QueryResult


class OutputFormat(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


def render(result: QueryResult, fmt: OutputFormat, title: str | None = None) -> None:
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
            table.add_row(*(_cell(v) for v in row))
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

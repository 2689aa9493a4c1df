"""`circuitdb graph` and `steer`: attribution graphs and interventions on their features."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import polars as pl
import typer

from circuitdb.errors import CircuitDBError
from query.cli.common import (
    MAX_ROWS,
    ConfigOption,
    FormatOption,
    GroupingThresholdOption,
    LayerGapOption,
    MinCosineOption,
    MinLabelOverlapOption,
    RandomGroupSeedOption,
    StoreOption,
    app,
    built_store,
    graph_transcoders,
    integers,
    open_project,
    to_stderr,
)
from query.graph_view import delete_annotation, graph_tree, rename_annotation, save_annotation, supernode_level
from query.questions import export_graph_json, graph_listing, node_edges
from query.render import (
    OutputFormat,
    render,
    render_graph_diff,
    render_graph_row,
    render_graph_tree,
    render_steering,
)

graph_app = typer.Typer(help="Attribution graphs (circuit tracing).", no_args_is_help=True)
app.add_typer(graph_app, name="graph")


@graph_app.command("build")
def graph_build(
    prompt: Annotated[
        str | None, typer.Argument(help="The prompt whose next-token prediction to explain (not with --set).")
    ] = None,
    minus: Annotated[
        list[str] | None,
        typer.Argument(help="`- TOKEN` after --target TOKEN: explain the logit difference.", show_default=False),
    ] = None,
    target: Annotated[
        list[str] | None,
        typer.Option(help="Explain these next tokens (strings of one token each, or id:N) instead of the top logits."),
    ] = None,
    target_vector: Annotated[
        str | None, typer.Option(help=".npy of d_model values: a direction read where the unembedding reads.")
    ] = None,
    target_feature: Annotated[
        str | None, typer.Option(help="<dictionary>/<layer>/<index>@<position>: what drives that feature there.")
    ] = None,
    start_error_nodes: Annotated[
        bool, typer.Option(help="Keep the BOS position's MLP errors as nodes (not circuit-tracer's rule).")
    ] = False,
    max_feature_nodes: Annotated[int | None, typer.Option(help="Features kept, by influence on the logits.")] = None,
    memory_gb: Annotated[float | None, typer.Option(help="Memory the graph may take (attribution.memory_gb).")] = None,
    transcoders: Annotated[
        str | None,
        typer.Option(
            help="Folder of transcoders in any known format (circuit-tracer, GemmaScope, ...): no store needed."
        ),
    ] = None,
    dictionaries: Annotated[
        str | None,
        typer.Option(help="A dictionary set of the store other than the configured one (attribution.dictionaries)."),
    ] = None,
    prompt_set: Annotated[
        str | None, typer.Option("--set", help="Build every graph of this prompt set (resumes a stopped build).")
    ] = None,
    prompts: Annotated[
        Path | None, typer.Option(help="With --set: a .jsonl or .csv of prompts (prompt, target, tags).")
    ] = None,
    template: Annotated[str | None, typer.Option(help="With --set: a prompt with {} for each --filler.")] = None,
    like: Annotated[
        str | None,
        typer.Option(help="With --set: the prompts and targets of this stored set (e.g. other dictionaries)."),
    ] = None,
    filler: Annotated[
        list[str] | None, typer.Option(help="With --template: a word for {}; 'France= Paris' also sets the target.")
    ] = None,
    fmt: Annotated[OutputFormat, typer.Option("--format", "-f", help="table or json (one line)")] = OutputFormat.table,
    store: StoreOption = None,
    config: ConfigOption = None,
) -> None:
    """Trace the prompt through the replacement model, attribute, prune, and store the graph (or every graph of
    a prompt set, with --set)."""
    if prompt_set is not None:
        from query.cli.circuit import build_prompt_set

        if prompt is not None or target or minus or target_vector or target_feature or transcoders:
            raise CircuitDBError("--set builds the set's own prompts and targets: give no prompt or target options")
        overrides = {"attribution.max_feature_nodes": max_feature_nodes, "attribution.memory_gb": memory_gb}
        overrides["attribution.dictionaries"] = dictionaries
        build_prompt_set(prompt_set, prompts, template, filler, like, overrides, store, config)
        return
    if prompt is None:
        raise CircuitDBError("give the prompt (or --set NAME to build a prompt set)")
    from circuitdb.attribution.pipeline import build_graph, resolve_transcoders
    from orchestration.instance import record_graph

    overrides = {"attribution.max_feature_nodes": max_feature_nodes, "attribution.memory_gb": memory_gb}
    overrides["attribution.start_error_nodes"] = start_error_nodes or None
    if dictionaries and transcoders:
        raise CircuitDBError("give --dictionaries (a set of the store) or --transcoders (a folder), not both")
    overrides["attribution.dictionaries"] = dictionaries
    spec = target_spec(target, minus, target_vector, target_feature)
    if not prompt.strip():
        raise CircuitDBError("the prompt is empty")
    with open_project(config, store=store, **overrides) as project:
        if not transcoders:  # a folder of transcoders needs no built store
            project.built()
        cfg = project.config.attribution
        named = resolve_transcoders(project.store, cfg, transcoders)
        row, _ = build_graph(project.store, project.model, prompt, named, cfg, report=to_stderr, target=spec)
    record_graph(project.store.root, row, project.config.viewer_url)  # its partition in the UI, materialized
    render_graph_row(row, fmt)


def target_spec(tokens: list[str] | None, minus: list[str] | None, vector: str | None, feature: str | None):
    """What `graph build` explains, from its options; `- TOKEN` trails a single --target."""
    from circuitdb.attribution.targets import TargetSpec, check_spec

    minus = list(minus or [])
    if minus and (len(minus) != 2 or minus[0] != "-"):
        raise CircuitDBError(f"unexpected arguments {minus}: a logit difference is --target ' Paris' - ' London'")
    spec = TargetSpec(tuple(tokens or ()), minus[1] if minus else None, vector, feature)
    check_spec(spec)
    return spec


@graph_app.command("list")
def graph_list(fmt: FormatOption = OutputFormat.table, store: StoreOption = None, config: ConfigOption = None) -> None:
    """The stored graphs (their prompts: `sql "select slug, prompt from graphs"`)."""
    render(graph_listing(built_store(store, config)), fmt)


@graph_app.command("show")
def graph_show(
    slug: Annotated[str, typer.Argument(help="Graph id (see `graph list`).")],
    depth: Annotated[int, typer.Option(min=1, max=32, help="Levels of the tree below the logit.")] = 4,
    width: Annotated[int, typer.Option(min=1, max=100, help="Strongest inputs shown per node.")] = 3,
    supernodes: Annotated[
        bool, typer.Option("--supernodes", help="Each saved supernode (by hand or automatic) as one node.")
    ] = False,
    store: StoreOption = None,
    config: ConfigOption = None,
) -> None:
    """The strongest paths into the top logit, as a tree: each node's strongest inputs below it."""
    row, nodes, edges, groups = graph_tree(built_store(store, config), slug)
    if supernodes:
        nodes, edges = supernode_level(nodes, edges, groups)
    render_graph_tree(row, nodes, edges, groups, depth, width)


@graph_app.command("edges")
def graph_edges(
    slug: Annotated[str, typer.Argument(help="Graph id (see `graph list`).")],
    source: Annotated[str | None, typer.Option("--from", help="Edges leaving this node id.")] = None,
    target: Annotated[str | None, typer.Option("--to", help="Edges entering this node id.")] = None,
    k: Annotated[int, typer.Option(min=1, max=MAX_ROWS, help="How many, strongest first.")] = 20,
    fmt: FormatOption = OutputFormat.table,
    store: StoreOption = None,
    config: ConfigOption = None,
) -> None:
    """Edges of a graph from or to one node, strongest first, with the other end's label."""
    render(node_edges(built_store(store, config), slug, source, target, k), fmt)


@graph_app.command("supernode")
def graph_supernode(
    slug: Annotated[str, typer.Argument(help="Graph id (see `graph list`).")],
    name: Annotated[str, typer.Argument(help="The supernode's name (an existing one of that name is replaced).")],
    node_ids: Annotated[
        list[str] | None, typer.Argument(help="Two or more node ids of the graph (see `graph show`).")
    ] = None,
    rename: Annotated[str | None, typer.Option(help="Give the supernode NAME this name instead.")] = None,
    delete: Annotated[bool, typer.Option("--delete", help="Delete the supernode NAME.")] = False,
    fmt: FormatOption = OutputFormat.table,
    store: StoreOption = None,
    config: ConfigOption = None,
) -> None:
    """Group nodes of a graph under a name, as the viewer's "group" does (or rename or delete a group); lists
    the graph's supernodes."""
    if sum((bool(node_ids), rename is not None, delete)) != 1:
        raise CircuitDBError("give the node ids to group, --rename NEW or --delete")
    with open_project(config, store=store) as project:
        built = project.built().store
        if delete:
            saved = delete_annotation(built, slug, "supernode", name)
        elif rename is not None:
            saved = rename_annotation(built, slug, "supernode", name, rename)
        else:
            saved = save_annotation(built, slug, "supernode", name, node_ids or [])
    render(pl.DataFrame(saved, schema={"name": pl.String, "node_ids": pl.List(pl.String)}), fmt)


@graph_app.command("supernodes")
def graph_supernodes(
    slug: Annotated[str, typer.Argument(help="Graph id (see `graph list`).")],
    threshold: GroupingThresholdOption = 0.35,
    max_layer_gap: LayerGapOption = 3,
    draws: Annotated[int, typer.Option(min=2, max=100, help="Random groups each group is compared with.")] = 8,
    max_groups: Annotated[int, typer.Option(min=1, max=200, help="Groups validated, most influential first.")] = 20,
    seed: RandomGroupSeedOption = 0,
    fmt: FormatOption = OutputFormat.table,
    store: StoreOption = None,
    config: ConfigOption = None,
) -> None:
    """Group the graph's features automatically (decoder directions, the nodes they feed, labels), validate each
    group by intervention against random groups, and save those that pass as supernodes marked automatic."""
    from circuitdb.circuits.auto_supernodes import ValidationSettings, auto_supernodes
    from circuitdb.circuits.supernodes import GroupingSettings

    grouping = GroupingSettings(threshold=threshold, max_layer_gap=max_layer_gap)
    validation = ValidationSettings(draws=draws, seed=seed, max_groups=max_groups)
    with open_project(config, store=store) as project:
        named = graph_transcoders(project, slug)  # those the graph was built with
        cfg = project.config.attribution
        validated = auto_supernodes(project.built().store, project.model, named, cfg, slug, grouping, validation)
    rows = [
        (v.name, len(v.group.node_ids), v.effect, v.control, v.control_ci95, v.interchangeability, v.passed)
        for v in validated
    ]
    columns = ["name", "members", "effect", "control", "control_ci95", "interchangeability", "saved"]
    render(pl.DataFrame(rows, schema=columns, orient="row"), fmt)


@graph_app.command("diff")
def graph_diff(
    a: Annotated[str, typer.Argument(help="First graph id (see `graph list`).")],
    b: Annotated[str, typer.Argument(help="Second graph id, of the same prompt.")],
    min_cosine: MinCosineOption = 0.5,
    min_label_overlap: MinLabelOverlapOption = 0.3,
    top: Annotated[int, typer.Option(min=1, max=MAX_ROWS, help="Rows per table shown.")] = 10,
    out: Annotated[Path | None, typer.Option("--out", help="Also write the whole diff as one JSON document.")] = None,
    fmt: FormatOption = OutputFormat.table,
    store: StoreOption = None,
    config: ConfigOption = None,
) -> None:
    """Two graphs of one prompt (two dictionary sets, two targets, two models with one tokenizer): shared and
    unique nodes by influence, edge changes between shared nodes, scores and paths side by side; stored in
    `graph_diffs` and `graph_diff_edges`."""
    from circuitdb.circuits.diff import DiffSettings, diff_graphs
    from circuitdb.store.layout import atomic_write_bytes

    settings = DiffSettings(min_cosine=min_cosine, min_label_overlap=min_label_overlap)
    with open_project(config, store=store) as project:
        diff = diff_graphs(project.built().store, a, b, settings)
    if out is not None:
        atomic_write_bytes(out, json.dumps(diff.document, default=str).encode())
    render_graph_diff(diff.document, top, fmt)


@graph_app.command("export")
def graph_export(
    slug: Annotated[str, typer.Argument(help="Graph id (see `graph list`).")],
    out: Annotated[Path | None, typer.Option("--out", help="JSON file (circuit-tracer's graph schema).")] = None,
    html: Annotated[Path | None, typer.Option("--html", help="One self-contained HTML page, viewable offline.")] = None,
    max_edges: Annotated[int, typer.Option(min=0, help="Strongest edges the HTML page holds.")] = 5000,
    store: StoreOption = None,
    config: ConfigOption = None,
) -> None:
    """Write the graph as circuit-tracer JSON (which its viewers open) or as an offline HTML page."""
    if (out is None) == (html is None):
        raise CircuitDBError("give --out FILE.json or --html FILE.html")
    if out is not None:
        export_graph_json(built_store(store, config), slug, out)
    else:
        from query.viewer.pages import export_graph_html

        export_graph_html(built_store(store, config), slug, html, max_edges)
    typer.echo(f"wrote {out or html}")


@app.command()
def steer(
    prompt: Annotated[str, typer.Argument(help="The prompt.")],
    feature: Annotated[list[str], typer.Option(help="Feature id <dictionary>/<layer>/<index>; repeat for several.")],
    scale: Annotated[float | None, typer.Option(help="Multiply the feature's activation by this.")] = None,
    set_to: Annotated[float | None, typer.Option("--set", help="Set the activation to this value.")] = None,
    positions: Annotated[str | None, typer.Option(help="Comma-separated positions (default: all but BOS).")] = None,
    freeze_attention: Annotated[
        bool, typer.Option("--freeze-attention", help="Keep attention patterns and norms.")
    ] = False,
    generate: Annotated[int, typer.Option(min=0, max=1024, help="Tokens to sample greedily while steering.")] = 0,
    k: Annotated[int, typer.Option(min=1, max=MAX_ROWS, help="Logit changes to list.")] = 10,
    fmt: FormatOption = OutputFormat.table,
    store: StoreOption = None,
    config: ConfigOption = None,
) -> None:
    """Clamp, scale or zero features on a prompt and show how the next-token prediction moves."""
    from circuitdb.attribution.steering import Clamp, Steered, SteeringRun, steer_prompt, steered_set

    where = integers(positions, "--positions") if positions else None
    steered = [Steered(feature_id, where) for feature_id in feature]
    run = SteeringRun(prompt, steered, Clamp.from_options(scale, set_to), freeze_attention, generate)
    with open_project(config, store=store) as project:
        project.built()
        transcoders = project.transcoders(steered_set(run))
        row, changes = steer_prompt(project.store, project.model, transcoders, project.config.attribution, run, k)
    render_steering(row, changes, fmt)

"""`circuitdb`: build the store and ask it questions.

Every mistake a user can make ends in one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import json
import os
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from typer.exceptions import TyperException

from circuitdb.config import HOOK_KINDS
from circuitdb.errors import CircuitDBError
from circuitdb.project import Project
from circuitdb.store import Store
from query.engine import run_sql
from query.questions import (
    export_graph_json,
    feature_page,
    graph_listing,
    graph_tree,
    node_edges,
    table_listing,
    top_features,
)
from query.render import (
    OutputFormat,
    render,
    render_build,
    render_check,
    render_feature,
    render_graph_row,
    render_graph_tree,
    render_steering,
    render_sweep,
    render_tables,
)

app = typer.Typer(
    help="circuitdb: a feature and circuit database for transformer language models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

StoreOption = Annotated[
    str | None, typer.Option("--store", help="Store folder (default: circuitdb.yaml, $CIRCUITDB_STORE or ./store).")
]
ConfigOption = Annotated[str | None, typer.Option("--config", help="Project file (default: ./circuitdb.yaml).")]
FormatOption = Annotated[OutputFormat, typer.Option("--format", "-f", help="Output format.")]
ExplainerOption = Annotated[
    str, typer.Option(help="'embedded', a .gguf file or HF directory, or an OpenAI-compatible URL (…/v1).")
]
ExplainerModelOption = Annotated[str, typer.Option(help="Model name to ask an endpoint for.")]


def _project(config_file: str | None, **overrides: object) -> Project:
    """The project of `--config` with the command's flags as dotted overrides (None: not given)."""
    return Project.open(config_file, overrides)


def _to_stderr(message: str) -> None:
    typer.echo(message, err=True)


def _store(store: str | None, config_file: str | None) -> Store:
    """The built store a question reads (nothing is pushed: questions do not write)."""
    return _project(config_file, store=store).built().store


MAX_ROWS = 10_000
"""Most rows one answer lists (--k, --exemplars): past it, use `circuitdb sql`."""


@app.command()
def sql(
    query: Annotated[str, typer.Argument(help="One read-only SELECT statement over the store's tables.")],
    fmt: FormatOption = OutputFormat.table,
    store: StoreOption = None,
    config: ConfigOption = None,
) -> None:
    """Run a read-only SQL query (DuckDB dialect) over the store's tables."""
    render(run_sql(_store(store, config), query), fmt)


@app.command()
def tables(fmt: FormatOption = OutputFormat.table, store: StoreOption = None, config: ConfigOption = None) -> None:
    """List the store's tables with their row counts and documented columns.

    A damaged table is named in the error line at the end; the others are still listed."""
    listing = table_listing(_store(store, config))
    render_tables(listing, fmt)
    if listing.damaged:
        raise CircuitDBError("; ".join(listing.damaged))


@app.command()
def build(
    store: StoreOption = None,
    config: ConfigOption = None,
    model: Annotated[str | None, typer.Option(help="Model: 'embedded', a .gguf file or an HF directory.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda.")] = None,
    layers: Annotated[str | None, typer.Option(help="Comma-separated layers (default: all).")] = None,
    max_tokens: Annotated[int | None, typer.Option(min=1, help="Corpus size in tokens.")] = None,
) -> None:
    """Materialize the whole pipeline (corpus → activations → ...) into the store, in-process."""
    overrides = {"store": store, "model.spec": model, "model.device": device, "harvest.layers": layers}
    project = _project(config, **overrides, **{"corpus.max_tokens": max_tokens})  # flags checked before imports

    from orchestration.build import build_all

    with project:
        checks = build_all(project)
    render_build(project.built().store, checks)


@app.command()
def check(fmt: FormatOption = OutputFormat.table, store: StoreOption = None, config: ConfigOption = None) -> None:
    """Verify every file of the store against the checksum recorded when it was written; list what to rebuild."""
    from query.questions import store_check

    report = store_check(_store(store, config))
    render_check(report, fmt)
    if report.damaged:
        raise CircuitDBError(f"{report.damaged} damaged or missing files; re-materialize what the rebuild column names")


dictionary_app = typer.Typer(help="Trained sparse dictionaries.", no_args_is_help=True)
app.add_typer(dictionary_app, name="dictionary")


FORMAT_HELP = "see `circuitdb dictionary formats`"


@dictionary_app.command("formats")
def dictionary_formats(fmt: FormatOption = OutputFormat.table) -> None:
    """The dictionary file formats `export`, `import` and `graph build --transcoders` know."""
    from circuitdb.dictionaries.formats import format_table

    render(format_table(), fmt)


@dictionary_app.command("export")
def dictionary_export(
    out: Annotated[Path, typer.Option("--out", help="Folder to write (new or empty; see --overwrite).")],
    fmt: Annotated[str, typer.Option("--format", help=f"Target format ({FORMAT_HELP}).")] = "circuit-tracer",
    name: Annotated[str, typer.Option(help="Dictionary set name.")] = "plt",
    layer: Annotated[int | None, typer.Option(min=0, help="Export only this layer.")] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Write into a non-empty folder: its other files are kept.")
    ] = False,
    store: StoreOption = None,
    config: ConfigOption = None,
) -> None:
    """Export a dictionary set of the store in another project's format (circuit-tracer, SAELens, ...)."""
    from circuitdb.dictionaries.formats import check_export_target, check_format
    from circuitdb.dictionaries.stored import export_set

    check_format(fmt)  # both before the store is opened
    check_export_target(out, overwrite)
    count = export_set(_store(store, config), name, layer, fmt, out, overwrite)
    typer.echo(f"wrote {count} dictionar{'y' if count == 1 else 'ies'} to {out}")


@dictionary_app.command("import")
def dictionary_import(
    folder: Annotated[Path, typer.Argument(help="Folder with the published files (nothing is downloaded).")],
    fmt: Annotated[str | None, typer.Option("--format", help=f"Format (default: recognized; {FORMAT_HELP}).")] = None,
    name: Annotated[str | None, typer.Option(help="Name in the store (default: the folder's name).")] = None,
    kind: Annotated[str | None, typer.Option(help="sae or plt, where the files don't say.")] = None,
    hook: Annotated[str | None, typer.Option(help="Hook kind an SAE reads, where the files don't say.")] = None,
    store: StoreOption = None,
    config: ConfigOption = None,
) -> None:
    """Store a published dictionary set (circuit-tracer, GemmaScope, sparsify, SAELens) for the configured model."""
    from circuitdb.dictionaries.formats import ReadHint, read_dictionaries
    from circuitdb.dictionaries.pipeline import import_dictionary_set

    if hook is not None and hook not in HOOK_KINDS:
        raise CircuitDBError(f"--hook must be one of {', '.join(HOOK_KINDS)}, got {hook!r}")
    hint = ReadHint(kind=kind, hook=hook, name=name)
    dictionaries = read_dictionaries(folder, fmt, hint)
    with _project(config, store=store) as project:
        rows = import_dictionary_set(project.store, project.model, dictionaries)
    typer.echo(
        f"imported {dictionaries.name!r} ({dictionaries.format}, {dictionaries.kind}, "
        f"{rows[0]['input_hook'].split('.')[0]} → {rows[0]['target_hook'].split('.')[0]}): "
        f"{len(rows)} layers × {rows[0]['n_latents']} latents into {project.store.location}"
    )


class SkipChoice(StrEnum):
    recipe = "recipe"
    both = "both"
    on = "on"
    off = "off"


SKIPS = {"recipe": None, "both": [False, True], "on": [True], "off": [False]}


@dictionary_app.command("sweep")
def dictionary_sweep(
    layer: Annotated[int, typer.Option(min=0, help="Layer whose stored activations to train on.")],
    k: Annotated[str, typer.Option("--k", help="Comma-separated k values, e.g. 8,16,32,64,128.")],
    seeds: Annotated[int, typer.Option(min=1, max=10, help="Seeds per k (the interval is over them).")] = 3,
    skip: Annotated[
        SkipChoice,
        typer.Option(help="Skip connection: as the recipe has it, both (transcoders vs skip transcoders), on or off."),
    ] = SkipChoice.recipe,
    explain: Annotated[
        int, typer.Option(min=0, max=1000, help="Densest live latents explained and scored at every point.")
    ] = 0,
    explainer: ExplainerOption = "embedded",
    explainer_model: ExplainerModelOption = "",
    fmt: FormatOption = OutputFormat.table,
    store: StoreOption = None,
    config: ConfigOption = None,
) -> None:
    """Train the configured recipe at several sparsities (and seeds) on one layer; held-out metrics (and
    with --explain, explanation scores) per point in the `sweeps` table, and per k their mean ± 95% interval."""
    from circuitdb.sweeps import PointExplanations, sweep_layer

    ks = _integers(k, "--k")
    with _project(config, store=store) as project:
        project.built()
        explained = PointExplanations(project.explainer(explainer, explainer_model), explain) if explain else None
        rows = sweep_layer(
            project.store,
            project.model,
            project.corpus,
            project.config.dictionaries,
            layer,
            sorted(set(ks)),
            list(range(seeds)),
            SKIPS[skip.value],
            explained,
        )
    render_sweep(rows, bool(explain), fmt)


def _integers(text: str, option: str) -> list[int]:
    try:
        return [int(value) for value in text.split(",")]
    except ValueError:
        raise CircuitDBError(f"{option} must be comma-separated integers, got {text!r}") from None


feature_app = typer.Typer(help="Features of the trained dictionaries.", no_args_is_help=True)
app.add_typer(feature_app, name="feature")


@feature_app.command("show")
def feature_show(
    feature_id: Annotated[str, typer.Argument(help="<dictionary>/<layer>/<index>, e.g. plt/12/345")],
    fmt: Annotated[
        OutputFormat, typer.Option("--format", "-f", help="table (a readable page) or json")
    ] = OutputFormat.table,
    exemplars: Annotated[
        int, typer.Option(min=0, max=MAX_ROWS, help="Top exemplars to show (quantile ones: one per group).")
    ] = 8,
    store: StoreOption = None,
    config: ConfigOption = None,
) -> None:
    """Statistics, histogram, output logits, neighbours and exemplars of one feature."""
    feature, examples = feature_page(_store(store, config), feature_id, exemplars)
    if fmt is OutputFormat.table:
        render_feature(feature, examples)
    else:
        typer.echo(json.dumps({**feature, "exemplars": examples}, default=str))


search_app = typer.Typer(help="Find features.", no_args_is_help=True)
app.add_typer(search_app, name="search")


@search_app.command("similar")
def search_similar(
    feature_id: Annotated[str | None, typer.Argument(help="Feature whose decoder direction is the query.")] = None,
    vector: Annotated[
        Path | None, typer.Option(help="Query vector instead: a .npy file or numbers in a text file.")
    ] = None,
    k: Annotated[int, typer.Option(min=1, max=MAX_ROWS, help="How many features.")] = 10,
    layer_min: Annotated[int | None, typer.Option(min=0, help="Lowest layer.")] = None,
    layer_max: Annotated[int | None, typer.Option(min=0, help="Highest layer.")] = None,
    dictionary: Annotated[str | None, typer.Option(help="Only this dictionary set.")] = None,
    min_density: Annotated[float, typer.Option(min=0.0, max=1.0, help="Lowest density.")] = 0.0,
    max_density: Annotated[float, typer.Option(min=0.0, max=1.0, help="Highest density.")] = 1.0,
    fmt: FormatOption = OutputFormat.table,
    store: StoreOption = None,
    config: ConfigOption = None,
) -> None:
    """Features with the most similar decoder directions (cosine), across dictionaries and layers."""
    import numpy as np

    from circuitdb.store.vectors import feature_vector, nearest

    if (feature_id is None) == (vector is None):
        raise CircuitDBError("give a feature id or --vector FILE, not both")
    if layer_min is not None and layer_max is not None and layer_min > layer_max:
        raise CircuitDBError(f"--layer-min {layer_min} is above --layer-max {layer_max}")
    if min_density > max_density:
        raise CircuitDBError(f"--min-density {min_density} is above --max-density {max_density}")
    opened = _store(store, config)
    if vector is not None:
        try:
            query = np.load(vector) if vector.suffix == ".npy" else np.loadtxt(vector, dtype=np.float32)
        except (OSError, ValueError) as exc:
            raise CircuitDBError(f"cannot read vector file {vector}: {str(exc).splitlines()[0]}") from None
    else:
        query = feature_vector(opened, feature_id)
    layers = (
        None if layer_min is None and layer_max is None else (layer_min or 0, 10**6 if layer_max is None else layer_max)
    )
    found = nearest(opened, query, k, layers, dictionary, (min_density, max_density), exclude=feature_id)
    render(found, fmt)


@search_app.command("text")
def search_text(
    text: Annotated[str, typer.Argument(help="Text to run through the model.")],
    k: Annotated[int, typer.Option(min=1, max=MAX_ROWS, help="How many features (pooled) or per token.")] = 10,
    per_token: Annotated[bool, typer.Option("--per-token", help="The top features of every token.")] = False,
    name: Annotated[str, typer.Option(help="Dictionary set.")] = "plt",
    fmt: FormatOption = OutputFormat.table,
    store: StoreOption = None,
    config: ConfigOption = None,
) -> None:
    """Features most active on a text: pooled (max over tokens) or per token, ranked by activation / max."""
    from circuitdb.dictionaries.stored import stored_set
    from circuitdb.features import ranked_text_matches

    project = _project(config, store=store).built()
    if not text.strip():
        raise CircuitDBError("empty text: give some words to search with")
    found = ranked_text_matches(project.store, project.model, stored_set(project.store, name), text, k, per_token)
    render(found, fmt)


@feature_app.command("top")
def feature_top(
    layer: Annotated[int | None, typer.Option(min=0, help="Only this layer.")] = None,
    by: Annotated[str, typer.Option(help="density or max_act.")] = "density",
    k: Annotated[int, typer.Option(min=1, max=MAX_ROWS, help="How many.")] = 20,
    fmt: FormatOption = OutputFormat.table,
    store: StoreOption = None,
    config: ConfigOption = None,
) -> None:
    """The most frequent (or strongest) live features, with their labels."""
    render(top_features(_store(store, config), layer, by, k), fmt)


@feature_app.command("explain")
def feature_explain(
    feature_id: Annotated[str | None, typer.Argument(help="Feature id <dictionary>/<layer>/<index>.")] = None,
    layer: Annotated[int | None, typer.Option(min=0, help="Explain this layer's --top densest live features.")] = None,
    top: Annotated[int, typer.Option(min=1, max=1000, help="How many features with --layer.")] = 10,
    explainer: ExplainerOption = "embedded",
    explainer_model: ExplainerModelOption = "",
    score: Annotated[bool, typer.Option("--score/--no-score", help="Score with detection and fuzzing.")] = True,
    fmt: FormatOption = OutputFormat.table,
    store: StoreOption = None,
    config: ConfigOption = None,
) -> None:
    """Explain features in one line each with a chat model (stored in `explanations`), and score the
    explanations on held-out text as delphi does (stored in `explanation_scores`)."""
    from circuitdb.explanations.explain import explain_and_score
    from query.questions import explained_table, explanation_targets

    with _project(config, store=store) as project:
        project.built()
        targets = explanation_targets(project.store, project.config.dictionaries.name, feature_id, layer, top)
        scoring = (project.model, project.corpus) if score else None
        chat = project.explainer(explainer, explainer_model)
        explanations, scores = explain_and_score(project.store, chat, targets, scoring)
    render(explained_table(explanations, scores), fmt)


explainer_app = typer.Typer(help="A local OpenAI-compatible explainer endpoint.", no_args_is_help=True)
app.add_typer(explainer_app, name="explainer")


@explainer_app.command("serve")
def explainer_serve(
    model: Annotated[str, typer.Option(help="'embedded', a .gguf file or an HF directory.")] = "embedded",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port.")] = 8090,
    host: Annotated[str, typer.Option(help="Interface to bind (127.0.0.1: this machine only).")] = "127.0.0.1",
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
) -> None:
    """Serve /v1/chat/completions over a local chat model (what `feature explain --explainer URL` can use)."""
    from circuitdb.explanations.chat import LocalChatModel
    from circuitdb.models import load_model
    from query.explainer_endpoint import serve as serve_endpoint

    chat = LocalChatModel(load_model(model, device))
    typer.echo(f"explainer {chat.name} at http://{host}:{port}/v1 (Ctrl-C stops)", err=True)
    serve_endpoint(chat, host, port)


graph_app = typer.Typer(help="Attribution graphs (circuit tracing).", no_args_is_help=True)
app.add_typer(graph_app, name="graph")


@graph_app.command("build")
def graph_build(
    prompt: Annotated[str, typer.Argument(help="The prompt whose next-token prediction to explain.")],
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
    fmt: Annotated[OutputFormat, typer.Option("--format", "-f", help="table or json (one line)")] = OutputFormat.table,
    store: StoreOption = None,
    config: ConfigOption = None,
) -> None:
    """Trace the prompt through the replacement model, attribute, prune, and store the graph."""
    from circuitdb.attribution.pipeline import build_graph
    from orchestration.instance import record_graph

    overrides = {"attribution.max_feature_nodes": max_feature_nodes, "attribution.memory_gb": memory_gb}
    overrides["attribution.start_error_nodes"] = start_error_nodes or None
    spec = target_spec(target, minus, target_vector, target_feature)
    if not prompt.strip():
        raise CircuitDBError("the prompt is empty")
    with _project(config, store=store, **overrides) as project:
        if not transcoders:  # a folder of transcoders needs no built store
            project.built()
        row, _ = build_graph(
            project.store, project.model, prompt, project.config.attribution, transcoders, _to_stderr, target=spec
        )
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
    render(graph_listing(_store(store, config)), fmt)


@graph_app.command("show")
def graph_show(
    slug: Annotated[str, typer.Argument(help="Graph id (see `graph list`).")],
    depth: Annotated[int, typer.Option(min=1, max=32, help="Levels of the tree below the logit.")] = 4,
    width: Annotated[int, typer.Option(min=1, max=100, help="Strongest inputs shown per node.")] = 3,
    store: StoreOption = None,
    config: ConfigOption = None,
) -> None:
    """The strongest paths into the top logit, as a tree: each node's strongest inputs below it."""
    render_graph_tree(*graph_tree(_store(store, config), slug), depth, width)


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
    render(node_edges(_store(store, config), slug, source, target, k), fmt)


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
        export_graph_json(_store(store, config), slug, out)
    else:
        from query.viewer.pages import export_graph_html

        export_graph_html(_store(store, config), slug, html, max_edges)
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
    from circuitdb.attribution.steering import Clamp, steer_prompt

    clamp = Clamp.from_options(scale, set_to)
    where = _integers(positions, "--positions") if positions else None
    with _project(config, store=store) as project:
        project.built()
        store_, lm, cfg = project.store, project.model, project.config.attribution
        row, changes = steer_prompt(store_, lm, cfg, prompt, feature, *clamp, where, freeze_attention, generate, k)
    render_steering(row, changes, fmt)


@app.command()
def serve(
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port.")] = 8080,
    host: Annotated[str, typer.Option(help="Interface to bind (127.0.0.1: this machine only).")] = "127.0.0.1",
    store: StoreOption = None,
    config: ConfigOption = None,
) -> None:
    """Browse the store: graphs drawn by layer and position, feature pages, dictionaries' metrics (read-only)."""
    from query.viewer.app import serve as serve_store

    project = _project(config, store=store).built()
    typer.echo(f"serving {project.store.location} at http://{host}:{port}/ (Ctrl-C stops)", err=True)
    serve_store(project, host, port)


@app.command()
def ui(
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port of the webserver.")] = 3000,
    host: Annotated[str, typer.Option(help="Interface to bind (127.0.0.1: this machine only).")] = "127.0.0.1",
    store: StoreOption = None,
    config: ConfigOption = None,
) -> None:
    """Serve the Dagster UI (webserver + daemon) over the store's persistent instance; Ctrl-C stops both."""
    from orchestration.ui import serve

    serve(_project(config, store=store).store.root, config, host, port)


_DEBUG = "CIRCUITDB_DEBUG"
_traceback = {"shown": False}
"""Whether this invocation shows the traceback of a failure (--debug or CIRCUITDB_DEBUG=1)."""


@app.callback()
def _options(
    debug: Annotated[bool, typer.Option("--debug", help=f"Show the traceback of a failure (or {_DEBUG}=1).")] = False,
) -> None:
    _traceback["shown"] |= debug


def _failure(exc: BaseException) -> tuple[str, int]:
    """The one line and exit code a failure ends in."""
    if isinstance(exc, CircuitDBError):
        return str(exc), 1
    if isinstance(exc, TyperException):  # a usage error: a bad option, a missing argument, a bad value
        return " ".join(exc.format_message().split()), exc.exit_code
    if isinstance(exc, KeyboardInterrupt | typer.Abort):
        return "interrupted", 130
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.strerror or type(exc).__name__}: {exc.filename}", 1
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first} (run with --debug for the traceback)", 1


def main() -> None:
    """Console entry point: every failure ends in one `error:` line on stderr and a non-zero exit (the
    traceback too with --debug or CIRCUITDB_DEBUG=1)."""
    _traceback["shown"] = os.environ.get(_DEBUG) == "1"
    try:
        code = app(standalone_mode=False)
    except (Exception, KeyboardInterrupt) as exc:
        if _traceback["shown"] and not isinstance(exc, CircuitDBError | TyperException):
            raise
        message, code = _failure(exc)
        if message:  # no arguments at all: the help was the answer
            typer.echo(f"error: {message}", err=True)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()

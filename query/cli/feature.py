"""`circuitdb feature`, `search` and `explainer`: features shown, found and explained."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from circuitdb.errors import CircuitDBError
from query.cli.common import (
    MAX_ROWS,
    ConfigOption,
    ExplainerModelOption,
    ExplainerOption,
    FormatOption,
    HostOption,
    StoreOption,
    app,
    built_store,
    open_project,
)
from query.questions import (
    feature_page,
    top_features,
)
from query.render import (
    OutputFormat,
    render,
    render_feature,
)

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
    feature, examples = feature_page(built_store(store, config), feature_id, exemplars)
    if fmt is OutputFormat.table:
        render_feature(feature, examples)
    else:
        typer.echo(json.dumps({**feature, "exemplars": examples}, default=str))


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
    render(top_features(built_store(store, config), layer, by, k), fmt)


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

    with open_project(config, store=store) as project:
        project.built()
        targets = explanation_targets(project.store, project.config.dictionaries.name, feature_id, layer, top)
        scoring = (project.model, project.corpus) if score else None
        chat = project.explainer(explainer, explainer_model)
        explanations, scores = explain_and_score(project.store, chat, targets, scoring)
    render(explained_table(explanations, scores), fmt)


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
    opened = built_store(store, config)
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

    project = open_project(config, store=store).built()
    if not text.strip():
        raise CircuitDBError("empty text: give some words to search with")
    found = ranked_text_matches(project.store, project.model, stored_set(project.store, name), text, k, per_token)
    render(found, fmt)


explainer_app = typer.Typer(help="A local OpenAI-compatible explainer endpoint.", no_args_is_help=True)
app.add_typer(explainer_app, name="explainer")


@explainer_app.command("serve")
def explainer_serve(
    model: Annotated[str, typer.Option(help="'embedded', a .gguf file or an HF directory.")] = "embedded",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port.")] = 8090,
    host: HostOption = "127.0.0.1",
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
) -> None:
    """Serve /v1/chat/completions over a local chat model (what `feature explain --explainer URL` can use)."""
    from circuitdb.explanations.chat import LocalChatModel
    from circuitdb.models import load_model
    from query.explainer_endpoint import serve as serve_endpoint

    chat = LocalChatModel(load_model(model, device))
    typer.echo(f"explainer {chat.name} at http://{host}:{port}/v1 (Ctrl-C stops)", err=True)
    serve_endpoint(chat, host, port)

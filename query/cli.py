"""`circuitdb`: build the store and ask it questions.

Every mistake a user can make ends in one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from circuitdb.config import ProjectConfig, load_config
from circuitdb.errors import CircuitDBError
from circuitdb.store import TABLES, Store, sql_literal
from query.engine import QueryResult, run_sql
from query.render import OutputFormat, render, render_feature

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


def _config(config_file: str | None, **overrides: object) -> ProjectConfig:
    return load_config(config_file, overrides)


def _require_features(store: Store) -> None:
    if "features" not in store.table_names():
        raise CircuitDBError("no feature statistics in the store yet; run `circuitdb build` (asset feature_stats)")


def _store(store: str | None, config_file: str | None) -> Store:
    return Store.open_existing(_config(config_file, store=store).store)


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
    """List the store's tables with their row counts and documented columns."""
    opened = _store(store, config)
    flat = []
    for table in opened.table_names():
        count = run_sql(opened, f'SELECT count(*) FROM "{table}"').rows[0][0]
        documented = TABLES[table].columns if table in TABLES else {}
        columns = [
            (name, dtype, documented[name][1] if name in documented else "")
            for name, dtype, *_ in run_sql(opened, f'DESCRIBE "{table}"').rows
        ]
        if fmt is OutputFormat.table:
            about = TABLES[table].description if table in TABLES else ""
            render(
                QueryResult(["column", "type", "meaning"], [], columns), fmt, title=f"{table}  ({count} rows) {about}"
            )
        flat.extend((table, count, *column) for column in columns)
    if fmt is not OutputFormat.table:
        render(QueryResult(["table", "rows", "column", "type", "meaning"], [], flat), fmt)


@app.command()
def build(
    store: StoreOption = None,
    config: ConfigOption = None,
    model: Annotated[str | None, typer.Option(help="Model: 'embedded', a .gguf file or an HF directory.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda.")] = None,
    layers: Annotated[str | None, typer.Option(help="Comma-separated layers (default: all).")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Corpus size in tokens.")] = None,
) -> None:
    """Materialize the whole pipeline (corpus → activations → ...) into the store, in-process."""
    from orchestration.build import build_all

    overrides = {"store": store, "model.spec": model, "model.device": device, "harvest.layers": layers}
    build_all(_config(config, **overrides, **{"corpus.max_tokens": max_tokens}))
    opened = Store.open_existing(_config(config, store=store).store)
    typer.echo(f"store ready at {opened.root}")
    for table in opened.table_names():
        count = run_sql(opened, f'SELECT count(*) FROM "{table}"').rows[0][0]
        typer.echo(f"  {table}: {count} rows")


dictionary_app = typer.Typer(help="Trained sparse dictionaries.", no_args_is_help=True)
app.add_typer(dictionary_app, name="dictionary")


class ExportFormat(StrEnum):
    circuit_tracer = "circuit-tracer"
    saelens = "saelens"


@dictionary_app.command("export")
def dictionary_export(
    out: Annotated[Path, typer.Option("--out", help="Folder to write (replaced if it exists).")],
    fmt: Annotated[ExportFormat, typer.Option("--format", help="Target format.")] = ExportFormat.circuit_tracer,
    name: Annotated[str, typer.Option(help="Dictionary set name.")] = "plt",
    layer: Annotated[int | None, typer.Option(help="Layer (SAELens exports one SAE).")] = None,
    store: StoreOption = None,
    config: ConfigOption = None,
) -> None:
    """Export trained dictionaries as a circuit-tracer transcoder set or a SAELens SAE folder."""
    from circuitdb.dictionaries.formats import (
        export_circuit_tracer,
        export_circuit_tracer_clt,
        export_saelens,
        load_dictionary,
    )

    opened = _store(store, config)
    query = f"SELECT layer, path, model, kind FROM dictionaries WHERE name = {sql_literal(name)} ORDER BY layer"
    rows = [r for r in run_sql(opened, query).rows if layer is None or r[0] == layer]
    if not rows:
        where = "" if layer is None else f" for layer {layer}"
        raise CircuitDBError(f"no dictionary {name!r}{where} in the store; build it first")
    if rows[0][3] == "clt":
        if fmt is ExportFormat.saelens:
            raise CircuitDBError("SAELens format holds SAEs; export a cross-layer transcoder to circuit-tracer")
        export_circuit_tracer_clt(load_dictionary(opened.root / rows[0][1])[0], out, rows[0][2])
        rows = rows[:1]
    elif fmt is ExportFormat.saelens:
        if len(rows) != 1:
            raise CircuitDBError("SAELens holds one SAE per folder: pass --layer")
        coder, meta = load_dictionary(opened.root / rows[0][1])
        export_saelens(coder, out, meta["input_hook"], meta["model"])
    else:
        coders = {r[0]: load_dictionary(opened.root / r[1])[0] for r in rows}
        export_circuit_tracer(coders, out, rows[0][2])
    typer.echo(f"wrote {len(rows)} dictionar{'y' if len(rows) == 1 else 'ies'} to {out}")


feature_app = typer.Typer(help="Features of the trained dictionaries.", no_args_is_help=True)
app.add_typer(feature_app, name="feature")


@feature_app.command("show")
def feature_show(
    feature_id: Annotated[str, typer.Argument(help="<dictionary>/<layer>/<index>, e.g. plt/12/345")],
    fmt: Annotated[
        OutputFormat, typer.Option("--format", "-f", help="table (a readable page) or json")
    ] = OutputFormat.table,
    exemplars: Annotated[int, typer.Option(help="Top exemplars to show (quantile ones: one per group).")] = 8,
    store: StoreOption = None,
    config: ConfigOption = None,
) -> None:
    """Statistics, histogram, output logits, neighbours and exemplars of one feature."""
    parts = feature_id.split("/")
    if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
        raise CircuitDBError(
            f"malformed feature id {feature_id!r}; expected <dictionary>/<layer>/<index>, e.g. plt/12/345"
        )
    opened = _store(store, config)
    _require_features(opened)
    found = run_sql(opened, f"SELECT * FROM features WHERE feature_id = {sql_literal(feature_id)}")
    if not found.rows:
        raise CircuitDBError(f"unknown feature {feature_id!r}: no such dictionary, layer or index in the store")
    feature = dict(zip(found.columns, found.rows[0], strict=True))
    query = (
        f"SELECT * FROM exemplars WHERE feature_id = {sql_literal(feature_id)} "
        f"AND ((kind = 'top' AND rank < {exemplars}) OR (kind = 'quantile' AND rank = 0)) "
        'ORDER BY kind DESC, "group" DESC, rank'
    )
    rows = run_sql(opened, query)
    examples = [dict(zip(rows.columns, row, strict=True)) for row in rows.rows]
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
    k: Annotated[int, typer.Option(help="How many features.")] = 10,
    layer_min: Annotated[int | None, typer.Option(help="Lowest layer.")] = None,
    layer_max: Annotated[int | None, typer.Option(help="Highest layer.")] = None,
    dictionary: Annotated[str | None, typer.Option(help="Only this dictionary set.")] = None,
    min_density: Annotated[float, typer.Option(help="Lowest density.")] = 0.0,
    max_density: Annotated[float, typer.Option(help="Highest density.")] = 1.0,
    fmt: FormatOption = OutputFormat.table,
    store: StoreOption = None,
    config: ConfigOption = None,
) -> None:
    """Features with the most similar decoder directions (cosine), across dictionaries and layers."""
    import numpy as np

    from circuitdb.store.vectors import feature_vector, nearest

    if (feature_id is None) == (vector is None):
        raise CircuitDBError("give a feature id or --vector FILE, not both")
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
    render(QueryResult(found.columns, [], found.rows()), fmt)


@search_app.command("text")
def search_text(
    text: Annotated[str, typer.Argument(help="Text to run through the model.")],
    k: Annotated[int, typer.Option(help="How many features (pooled) or per token.")] = 10,
    per_token: Annotated[bool, typer.Option("--per-token", help="The top features of every token.")] = False,
    name: Annotated[str, typer.Option(help="Dictionary set.")] = "plt",
    fmt: FormatOption = OutputFormat.table,
    store: StoreOption = None,
    config: ConfigOption = None,
) -> None:
    """Features most active on a text: pooled (max over tokens) or per token, ranked by activation / max."""
    import polars as pl

    from circuitdb.features import active_features, load_dictionary_set
    from circuitdb.models import load_model

    project = _config(config, store=store)
    opened = Store.open_existing(project.store)
    if not text.strip():
        raise CircuitDBError("empty text: give some words to search with")
    lm = load_model(project.model.spec, project.model.device)
    found = active_features(lm, load_dictionary_set(opened, name), name, text)
    if "features" in opened.table_names():
        stats = run_sql(
            opened, f"SELECT feature_id, max_act, label FROM features WHERE dictionary = {sql_literal(name)}"
        )
        known = pl.DataFrame(stats.rows, schema=stats.columns, orient="row")
        found = found.join(known, on="feature_id", how="left")
    else:
        found = found.with_columns(max_act=pl.lit(None, pl.Float32), label=pl.lit(None, pl.String))
    found = found.with_columns(relative=pl.col("activation") / pl.col("max_act"))  # null without stats: ranked last
    if per_token:
        found = (
            found.sort("relative", "activation", descending=True, nulls_last=True)
            .group_by("position", maintain_order=True)
            .head(k)
            .sort("position")
        )
    else:
        found = (
            found.sort("relative", "activation", descending=True, nulls_last=True)
            .unique("feature_id", keep="first", maintain_order=True)
            .head(k)
        )
    columns = ["position", "token", "feature_id", "activation", "relative", "label"]
    render(QueryResult(columns, [], found.select(columns).rows()), fmt)


@feature_app.command("top")
def feature_top(
    layer: Annotated[int | None, typer.Option(help="Only this layer.")] = None,
    by: Annotated[str, typer.Option(help="density or max_act.")] = "density",
    k: Annotated[int, typer.Option(help="How many.")] = 20,
    fmt: FormatOption = OutputFormat.table,
    store: StoreOption = None,
    config: ConfigOption = None,
) -> None:
    """The most frequent (or strongest) live features, with their labels."""
    if by not in ("density", "max_act"):
        raise CircuitDBError(f"--by must be density or max_act, got {by!r}")
    opened = _store(store, config)
    _require_features(opened)
    where = "NOT dead" + (f" AND layer = {int(layer)}" if layer is not None else "")
    query = f"SELECT feature_id, density, max_act, label FROM features WHERE {where} ORDER BY {by} DESC LIMIT {int(k)}"
    render(run_sql(opened, query), fmt)


@app.command()
def ui(workspace: Annotated[str, typer.Option(help="Dagster workspace file.")] = "workspace.yaml") -> None:
    """Open the Dagster UI (`dagster dev -w workspace.yaml`)."""
    if not Path(workspace).is_file():
        raise CircuitDBError(f"workspace file not found: {workspace} (run from the project folder)")
    dagster = shutil.which("dagster")
    if dagster is None:
        raise CircuitDBError("the `dagster` command is not on PATH; activate the project's virtualenv")
    os.execv(dagster, [dagster, "dev", "-w", workspace])


def main() -> None:
    """Console entry point: turns every CircuitDBError into one line on stderr and exit code 1."""
    try:
        app()
    except CircuitDBError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()

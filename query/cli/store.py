"""Commands on the store as a whole: SQL, its tables, building it, checking it, serving it."""

from __future__ import annotations

from typing import Annotated

import typer

from circuitdb.errors import CircuitDBError
from query.cli.common import (
    ConfigOption,
    FormatOption,
    HostOption,
    StoreOption,
    app,
    built_store,
    open_project,
)
from query.engine import run_sql
from query.questions import (
    table_listing,
)
from query.render import (
    OutputFormat,
    render,
    render_build,
    render_check,
    render_tables,
)


@app.command()
def sql(
    query: Annotated[str, typer.Argument(help="One read-only SELECT statement over the store's tables.")],
    fmt: FormatOption = OutputFormat.table,
    store: StoreOption = None,
    config: ConfigOption = None,
) -> None:
    """Run a read-only SQL query (DuckDB dialect) over the store's tables."""
    render(run_sql(built_store(store, config), query), fmt)


@app.command()
def tables(fmt: FormatOption = OutputFormat.table, store: StoreOption = None, config: ConfigOption = None) -> None:
    """List the store's tables with their row counts and documented columns.

    A damaged table is named in the error line at the end; the others are still listed."""
    listing = table_listing(built_store(store, config))
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
    project = open_project(config, **overrides, **{"corpus.max_tokens": max_tokens})  # flags checked before imports

    from orchestration.build import build_all

    with project:
        checks = build_all(project)
    render_build(project.built().store, checks)


@app.command()
def check(fmt: FormatOption = OutputFormat.table, store: StoreOption = None, config: ConfigOption = None) -> None:
    """Verify every file of the store against the checksum recorded when it was written; list what to rebuild."""
    from query.questions import store_check

    report = store_check(built_store(store, config))
    render_check(report, fmt)
    if report.damaged:
        raise CircuitDBError(f"{report.damaged} damaged or missing files; re-materialize what the rebuild column names")


@app.command()
def serve(
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port.")] = 8080,
    host: HostOption = "127.0.0.1",
    store: StoreOption = None,
    config: ConfigOption = None,
) -> None:
    """Browse the store: graphs drawn by layer and position, feature pages, dictionaries' metrics (read-only)."""
    from query.viewer.app import serve as serve_store

    project = open_project(config, store=store).built()
    typer.echo(f"serving {project.store.location} at http://{host}:{port}/ (Ctrl-C stops)", err=True)
    serve_store(project, host, port)


@app.command()
def ui(
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port of the webserver.")] = 3000,
    host: HostOption = "127.0.0.1",
    store: StoreOption = None,
    config: ConfigOption = None,
) -> None:
    """Serve the Dagster UI (webserver + daemon) over the store's persistent instance; Ctrl-C stops both."""
    from orchestration.ui import serve

    serve(open_project(config, store=store).store.root, config, host, port)

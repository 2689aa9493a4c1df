"""Commands on the store as a whole: SQL, its tables, building it, checking it, serving it."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlsplit

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
    port: Annotated[
        int | None, typer.Option(min=1, max=65535, help="Port (default: that of the configured viewer_url).")
    ] = None,
    host: Annotated[
        str | None, typer.Option(help="Address to bind (default: that of viewer_url, 127.0.0.1 unless changed).")
    ] = None,
    token: Annotated[
        str | None, typer.Option(help="Token every write must carry (generated when --host is not loopback).")
    ] = None,
    store: StoreOption = None,
    config: ConfigOption = None,
) -> None:
    """Browse the store: graph pages (pin, group, score, intervene), feature pages, dictionaries' metrics."""
    from query.viewer.access import Access, is_loopback
    from query.viewer.app import serve as serve_store

    project = open_project(config, store=store).built()
    address = urlsplit(project.config.viewer_url)
    host, port = host or address.hostname or "127.0.0.1", port or address.port or 8080
    access = Access.for_address(host, token)
    url = f"http://{host}:{port}/" + (f"?token={access.token}" if access.token else "")
    typer.echo(f"serving {project.store.location} at {url} (Ctrl-C stops)", err=True)
    if not is_loopback(host):
        typer.echo(f"warning: {host} is reachable from other machines; writes need the token above", err=True)
    if (address.hostname, address.port) != (host, port):
        typer.echo(f"note: Dagster links graphs to viewer_url {project.config.viewer_url}; set it to {url}", err=True)
    serve_store(project, host, port, access)


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

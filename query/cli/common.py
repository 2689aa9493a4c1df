"""What every command shares: the root Typer app, the common options, and opening the project."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from circuitdb.errors import CircuitDBError
from circuitdb.project import Project
from circuitdb.store import Store
from query.render import OutputFormat

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
HostOption = Annotated[str, typer.Option(help="Interface to bind (127.0.0.1: this machine only).")]


def open_project(config_file: str | None, **overrides: object) -> Project:
    """The project of `--config` with the command's flags as dotted overrides (None: not given)."""
    return Project.open(config_file, overrides)


def to_stderr(message: str) -> None:
    typer.echo(message, err=True)


def built_store(store: str | None, config_file: str | None) -> Store:
    """The built store a question reads (nothing is pushed: questions do not write)."""
    return open_project(config_file, store=store).built().store


MinCosineOption = Annotated[
    float, typer.Option(min=-1.0, max=1.0, help="Two dictionary sets: least decoder cosine of a feature match.")
]
MinLabelOverlapOption = Annotated[
    float, typer.Option(min=0.0, max=1.0, help="Two models: least label word overlap of a feature match.")
]
"""The diff's matching thresholds (`graph diff`, `circuit diff`)."""

GroupingThresholdOption = Annotated[
    float, typer.Option(min=0.0, max=1.0, help="Least average similarity within a group.")
]
LayerGapOption = Annotated[int, typer.Option(min=0, help="Features farther apart in layers are never grouped.")]
RandomGroupSeedOption = Annotated[int, typer.Option(help="Seed of the random groups.")]
"""Automatic supernodes' options (`graph supernodes`, `circuit supernodes`)."""

MAX_ROWS = 10_000
"""Most rows one answer lists (--k, --exemplars): past it, use `circuitdb sql`."""


def integers(text: str, option: str) -> list[int]:
    try:
        return [int(value) for value in text.split(",")]
    except ValueError:
        raise CircuitDBError(f"{option} must be comma-separated integers, got {text!r}") from None


def graph_transcoders(project: Project, slug: str):
    """The transcoders a stored graph was built with (a store set by name, or the folder it names), as
    `NamedTranscoders`: what re-running its prompt for interventions needs."""
    from circuitdb.attribution.pipeline import NamedTranscoders, resolve_transcoders
    from circuitdb.store.graphs import graph_row

    name = graph_row(project.built().store, slug)["dictionaries"]
    if Path(name).is_absolute():
        return resolve_transcoders(project.store, project.config.attribution, name)
    return NamedTranscoders(project.transcoders(name), name)

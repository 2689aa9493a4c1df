"""`circuitdb dictionary`: formats, export, import and sparsity sweeps of dictionary sets."""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import polars as pl
import typer

from circuitdb.config import HOOK_KINDS
from circuitdb.errors import CircuitDBError
from circuitdb.store import read_table
from query.cli.common import (
    ConfigOption,
    ExplainerModelOption,
    ExplainerOption,
    FormatOption,
    StoreOption,
    app,
    built_store,
    integers,
    open_project,
)
from query.render import (
    OutputFormat,
    render,
    render_sweep,
)

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
    count = export_set(built_store(store, config), name, layer, fmt, out, overwrite)
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
    with open_project(config, store=store) as project:
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

    ks = integers(k, "--k")
    with open_project(config, store=store) as project:
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


@dictionary_app.command("train")
def dictionary_train(
    name: Annotated[str, typer.Argument(help="Name of the new set in the store (not the configured one).")],
    skip: Annotated[
        bool | None, typer.Option("--skip/--no-skip", help="With or without the linear skip (default: as configured).")
    ] = None,
    k: Annotated[
        int | None, typer.Option("--k", min=1, help="Active latents per token (default: as configured).")
    ] = None,
    n_latents: Annotated[int | None, typer.Option(min=1, help="Width (default: as configured).")] = None,
    layers: Annotated[
        str | None, typer.Option(help="Comma-separated layers (default: those of the configured set).")
    ] = None,
    fmt: FormatOption = OutputFormat.table,
    store: StoreOption = None,
    config: ConfigOption = None,
) -> None:
    """Train another set of per-layer transcoders on the stored activations, beside the configured one (e.g.
    without the skip connection), with its features and decoder vectors: `graph build --dictionaries NAME` then
    traces with it and `graph diff` compares the two."""
    from tqdm import tqdm

    from circuitdb.dictionaries.variant import train_variant_set, variant_config

    with open_project(config, store=store) as project:
        built = project.built().store
        cfg = variant_config(project.config.dictionaries, name, skip, k, n_latents)
        configured = read_table(built, "dictionaries", ["name", "layer"]).filter(
            pl.col("name") == project.config.dictionaries.name
        )
        chosen = integers(layers, "--layers") if layers else sorted(configured["layer"].to_list())
        unknown = sorted(set(chosen) - set(configured["layer"].to_list()))
        if unknown:
            raise CircuitDBError(
                f"layer {unknown[0]} has no dictionary of the configured set (nor harvested activations)"
            )
        bar = tqdm(total=len(chosen), desc=f"train {name}", unit="layer")

        def trained(row: dict) -> None:
            bar.write(f"layer {row['layer']}: fvu_excl_pos0 {row['fvu_excl_pos0']:.3f}, l0 {row['l0']:.1f}", sys.stderr)
            bar.update()

        rows = train_variant_set(built, project.model, project.corpus, cfg, chosen, trained)
        bar.close()
    render(pl.DataFrame(rows).select("name", "layer", "fvu", "fvu_excl_pos0", "l0", "dead_frac", "delta_ce"), fmt)

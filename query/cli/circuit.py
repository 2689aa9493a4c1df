"""`circuitdb circuit` and `graph build --set`: circuits studied over prompt sets (built, aggregated, ablated)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

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
    graph_transcoders,
    open_project,
    to_stderr,
)
from query.render import OutputFormat, render_ablation, render_circuit, render_set_diff, render_set_supernodes

circuit_app = typer.Typer(help="Circuits over prompt sets: what recurs, and whether it matters.", no_args_is_help=True)
app.add_typer(circuit_app, name="circuit")


def build_prompt_set(
    name: str,
    prompts: Path | None,
    template: str | None,
    fillers: list[str] | None,
    like: str | None,
    overrides: dict,
    store: str | None,
    config: str | None,
) -> None:
    """Define the set (from a file or a template, or the stored one), build its graphs not built yet with the
    model and transcoders loaded once, one line per prompt, then aggregate it."""
    from tqdm import tqdm

    from circuitdb.attribution.pipeline import NamedTranscoders
    from circuitdb.circuits.building import build_prompt_set as build
    from circuitdb.circuits.building import to_build
    from circuitdb.circuits.prompt_sets import (
        check_set_name,
        define_set,
        read_prompt_file,
        set_rows,
        stored_prompts,
        template_prompts,
    )

    check_set_name(name)
    if sum(given is not None for given in (prompts, template, like)) > 1:
        raise CircuitDBError("give --prompts FILE, --template with --filler or --like SET, not two of them")
    if template is not None and not fillers:
        raise CircuitDBError("a --template needs one --filler or more")
    given = read_prompt_file(prompts) if prompts else template_prompts(template, fillers) if template else None
    with open_project(config, store=store, **overrides) as project:
        built = project.built().store
        if like is not None:
            given = stored_prompts(built, like)
        if given is None and set_rows(built, name).is_empty():
            raise CircuitDBError(f"no prompt set {name!r} yet: give --prompts FILE or --template and --filler")
        if given is not None:
            define_set(built, name, given)
        cfg = project.config.attribution
        named = NamedTranscoders(project.transcoders(cfg.dictionaries), cfg.dictionaries)
        todo = to_build(set_rows(built, name)).height
        bar = tqdm(total=todo, desc=f"graphs of {name}", unit="graph", disable=todo == 0)

        def finished(done) -> None:
            row = done.row
            bar.write(
                f"{done.position}: {row['slug']} replacement {row['replacement_score']:.3f} completeness "
                f"{row['completeness_score']:.3f} ({row['n_nodes_pruned']} nodes, {row['seconds']:.1f} s)",
                file=sys.stderr,
            )
            bar.update()

        summary = build(built, project.model, named, cfg, name, finished)
        bar.close()
    to_stderr(
        f"prompt set {name}: {summary['graphs']} of {summary['prompts']} graphs; replacement "
        f"{summary['replacement']:.3f} ± {summary['replacement_ci95']:.3f}, completeness "
        f"{summary['completeness']:.3f} ± {summary['completeness_ci95']:.3f}"
    )


@circuit_app.command("show")
def circuit_show(
    name: Annotated[str, typer.Argument(help="The prompt set (see `sql 'select * from circuit_sets'`).")],
    k: Annotated[int, typer.Option(min=1, max=MAX_ROWS, help="Features and edges listed.")] = 15,
    fmt: FormatOption = OutputFormat.table,
    store: StoreOption = None,
    config: ConfigOption = None,
) -> None:
    """The set's recurring features and the aggregated edges into its target (aggregating it first)."""
    from circuitdb.circuits.aggregate import aggregate_set
    from query.questions import set_circuit

    with open_project(config, store=store) as project:
        built = project.built().store
        aggregate_set(built, name)
        render_circuit(*set_circuit(built, name, k), fmt)


@circuit_app.command("ablate")
def circuit_ablate(
    name: Annotated[str, typer.Argument(help="The prompt set.")],
    feature: Annotated[list[str] | None, typer.Option(help="A feature id to zero; repeat for several.")] = None,
    top: Annotated[int | None, typer.Option(min=1, max=1000, help="Zero the set's N most recurring features.")] = None,
    live: Annotated[bool, typer.Option("--live", help="Live attention (default: frozen patterns and norms).")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the random control features.")] = 0,
    fmt: FormatOption = OutputFormat.table,
    store: StoreOption = None,
    config: ConfigOption = None,
) -> None:
    """Zero features on every prompt of the set; the mean change of each prompt's target (95% interval) and the
    share of prompts whose top token flips, beside as many random features of the same layers."""
    from circuitdb.attribution.steering import dictionary_set
    from circuitdb.circuits.ablation import ablate_set, top_recurring
    from circuitdb.circuits.prompt_sets import built_slugs

    if (feature is None) == (top is None):
        raise CircuitDBError("give --feature (repeatable) or --top N")
    with open_project(config, store=store) as project:
        built = project.built().store
        built_slugs(built, name)  # an unknown set is one line before the model loads
        chosen = list(feature) if feature else top_recurring(built, name, top)
        transcoders = project.transcoders(dictionary_set(chosen, "ablate"))
        cfg = project.config.attribution
        result = ablate_set(built, project.model, transcoders, cfg, name, chosen, not live, seed)
    render_ablation(result, fmt)


@circuit_app.command("supernodes")
def circuit_supernodes(
    name: Annotated[str, typer.Argument(help="The prompt set (aggregated: `circuit show`).")],
    min_share: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Least share of the set's graphs a grouped feature is in.")
    ] = 0.3,
    max_prompts: Annotated[int, typer.Option(min=1, max=1000, help="Prompts each group is validated on.")] = 8,
    threshold: GroupingThresholdOption = 0.35,
    max_layer_gap: LayerGapOption = 3,
    draws: Annotated[int, typer.Option(min=1, max=100, help="Random groups per group and prompt.")] = 4,
    max_groups: Annotated[int, typer.Option(min=1, max=200, help="Groups validated, most influential first.")] = 10,
    seed: RandomGroupSeedOption = 0,
    fmt: FormatOption = OutputFormat.table,
    store: StoreOption = None,
    config: ConfigOption = None,
) -> None:
    """Group the features recurring in the set's graphs (co-activation across its prompts, decoder directions,
    the nodes they feed, labels), validate each group on the set's prompts against random groups (mean ± 95%
    interval), and save those that pass: `circuit_supernodes`, and on each of the set's graphs."""
    from circuitdb.circuits.auto_supernodes import ValidationSettings
    from circuitdb.circuits.prompt_sets import built_slugs
    from circuitdb.circuits.set_supernodes import SetSelection, set_supernodes
    from circuitdb.circuits.supernodes import GroupingSettings

    selection = SetSelection(min_share=min_share, max_prompts=max_prompts)
    grouping = GroupingSettings(threshold=threshold, max_layer_gap=max_layer_gap)
    validation = ValidationSettings(draws=draws, seed=seed, max_groups=max_groups)
    with open_project(config, store=store) as project:
        built = project.built().store
        slugs = built_slugs(built, name)  # an unknown set is one line before the model loads
        if not slugs:
            raise CircuitDBError(f"no graph of prompt set {name!r} is built yet")
        named = graph_transcoders(project, slugs[0])  # those the set's graphs were built with
        cfg = project.config.attribution
        validated = set_supernodes(built, project.model, named, cfg, name, selection, grouping, validation)
    render_set_supernodes(validated, fmt)


@circuit_app.command("diff")
def circuit_diff(
    a: Annotated[str, typer.Argument(help="A prompt set.")],
    b: Annotated[str, typer.Argument(help="The same prompts under other dictionaries or another model.")],
    min_cosine: MinCosineOption = 0.5,
    min_label_overlap: MinLabelOverlapOption = 0.3,
    top: Annotated[int, typer.Option(min=1, max=MAX_ROWS, help="Rows per table shown.")] = 10,
    fmt: FormatOption = OutputFormat.table,
    store: StoreOption = None,
    config: ConfigOption = None,
) -> None:
    """Each shared prompt's two graphs diffed (`graph diff`), then summed over the set: which recurring features
    and top paths one side has and the other does not, with counts (`circuit_diffs`, `circuit_diff_paths`)."""
    from tqdm import tqdm

    from circuitdb.circuits.diff import DiffSettings
    from circuitdb.circuits.set_diff import diff_sets, paired_slugs

    settings = DiffSettings(min_cosine=min_cosine, min_label_overlap=min_label_overlap)
    with open_project(config, store=store) as project:
        built = project.built().store
        bar = tqdm(total=len(paired_slugs(built, a, b)), desc=f"diffs {a}~{b}", unit="prompt")
        result = diff_sets(built, a, b, settings, lambda *_: bar.update())
        bar.close()
    render_set_diff(result, top, fmt)

"""Automatic supernodes of a prompt set: the features that recur in the set's graphs grouped by what they do, with
co-activation across the set's prompts beside the decoder, output and label signals, then each group validated on
every prompt (up to `max_prompts`), its effect and its random groups' as mean ± 95% interval over the prompts.

A feature is named across prompts by its id and its dominant position counted back from the prompt's end (where
its influence summed over the set is largest); on each prompt a member is zeroed there. A group passes when
- the interval of its effect on the target's logit lies above that of random groups of the same size, layers and
  position (|mean effect| − its half-width > mean control + its half-width);
- its members are interchangeable on average over the prompts where two or more of them fire (as for one graph).
Passing groups land in `circuit_supernodes` (one partition per set) and, as automatic supernodes, on every graph
of the set holding two or more members, so its pages draw them.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from datetime import UTC, datetime
from typing import NamedTuple

import numpy as np
import polars as pl

from circuitdb.attribution.pipeline import NamedTranscoders, trace_prompt
from circuitdb.attribution.transcoders import Transcoders
from circuitdb.circuits.ablation import set_targets
from circuitdb.circuits.auto_supernodes import (
    DEFAULT_VALIDATION,
    Active,
    ValidationSettings,
    active_features,
    decoder_rows,
    group_name,
    measure_group,
    unique_name,
)
from circuitdb.circuits.prompt_sets import set_rows
from circuitdb.circuits.supernodes import (
    DEFAULT_GROUPING,
    Group,
    GroupingSettings,
    coactivation_similarity,
    decoder_similarity,
    group_features,
    label_similarity,
    output_similarity,
)
from circuitdb.config import AttributionConfig
from circuitdb.errors import CircuitDBError
from circuitdb.intervals import interval
from circuitdb.models import LoadedModel
from circuitdb.store import Store, parse_feature_id, read_table, write_partition
from circuitdb.store.graphs import retire_automatic, write_annotation
from circuitdb.store.schemas import TABLES

MIN_COACTIVATION_PROMPTS = 8
"""Fewest prompts co-activation is measured over: a correlation over fewer values is mostly chance."""


class SetSelection(NamedTuple):
    """Which of the set's recurring features are grouped, and on how many prompts groups are validated."""

    min_share: float = 0.3
    """Least share of the set's graphs a feature must appear in."""
    max_features: int = 300
    """Features grouped at most, those of most mean influence first."""
    max_prompts: int = 8
    """Prompts each group is validated on (the set's first built ones)."""


DEFAULT_SELECTION = SetSelection()


class SetValidated(NamedTuple):
    group: Group
    """Its node_ids are feature ids; its position counts back from the prompt's end."""
    name: str
    prompts: int
    """Prompts it was measured on."""
    effect: float
    """Mean change of the target's logit with the group zeroed."""
    effect_ci95: float
    control: float
    """Mean over prompts of the random groups' mean |change|."""
    control_ci95: float
    interchangeability: float
    """Mean over the prompts where two or more members fire."""
    passed: bool


class _Prompt(NamedTuple):
    slug: str
    length: int
    target: int
    active: Active


def recurring_features(store: Store, name: str, selection: SetSelection) -> pl.DataFrame:
    """The set's recurring features with the columns grouping needs: node_id (the feature id), feature_id, layer,
    index, position (dominant, from the end), influence (mean over graphs), label, token (most common text at
    that position)."""
    if read_table(store, "circuit_sets", partitions=[name]).is_empty():
        raise CircuitDBError(f"prompt set {name!r} is not aggregated yet: `circuitdb circuit show {name}` does it")
    recurring = (
        read_table(store, "circuit_features", ["feature_id", "layer", "graph_share", "mean_influence", "label"], [name])
        .filter(pl.col("graph_share") >= selection.min_share)
        .sort("mean_influence", descending=True)
        .head(selection.max_features)
    )
    if recurring.height < 2:
        raise CircuitDBError(
            f"fewer than two features recur in ≥ {selection.min_share:.0%} of set {name!r}'s graphs: lower --min-share"
        )
    slugs = [slug for slug in set_rows(store, name)["slug"] if slug is not None]
    graphs = read_table(store, "graphs", ["slug", "tokens"], slugs).select("slug", end=pl.col("tokens").list.len() - 1)
    nodes = (
        read_table(store, "graph_nodes", ["slug", "feature_id", "position", "influence", "token"], slugs)
        .filter(pl.col("feature_id").is_in(recurring["feature_id"].to_list()))
        .join(graphs, on="slug")
        .with_columns(from_end=(pl.col("end") - pl.col("position")).cast(pl.Int32))
    )
    dominant = (
        nodes.group_by("feature_id", "from_end")
        .agg(pl.col("influence").cast(pl.Float64).sum(), pl.col("token").mode().first())
        .sort("influence", "from_end", descending=[True, False])
        .unique("feature_id", keep="first")
        .select("feature_id", position="from_end", token="token")
    )
    indices = [parse_feature_id(f)[2] for f in recurring["feature_id"]]
    return (
        recurring.with_columns(index=pl.Series(indices, dtype=pl.Int32))
        .join(dominant, on="feature_id")
        .select(
            node_id="feature_id",
            feature_id="feature_id",
            layer="layer",
            index="index",
            position="position",
            influence="mean_influence",
            label="label",
            token="token",
        )  # fmt: skip
    )


def set_signals(
    store: Store, name: str, features: pl.DataFrame, transcoders: Transcoders, coactivations: np.ndarray
) -> dict[str, np.ndarray | None]:
    """Decoder directions, signed mean weights into the set's named nodes (`circuit_edges`), labels, and the
    features' activations across the prompts [n, prompts]."""
    decoders = decoder_rows(transcoders, features["layer"].to_list(), features["index"].to_list())
    where = {feature_id: i for i, feature_id in enumerate(features["feature_id"])}
    edges = read_table(store, "circuit_edges", ["source", "target", "mean_weight"], [name])
    edges = edges.filter(pl.col("source").is_in(list(where)))
    targets = {target: j for j, target in enumerate(edges["target"].unique().sort())}
    outgoing = np.zeros((features.height, max(len(targets), 1)))
    for source, target, weight in edges.iter_rows():
        outgoing[where[source], targets[target]] = weight
    return {
        "decoder": decoder_similarity(decoders),
        "output": output_similarity(outgoing),
        "label": label_similarity(features["label"].fill_null("").to_list()),
        "coactivation": coactivation_similarity(coactivations)
        if coactivations.shape[1] >= MIN_COACTIVATION_PROMPTS
        else None,
    }


def _traced(lm: LoadedModel, named: NamedTranscoders, cfg: AttributionConfig, store: Store, name: str, count: int):
    """The set's first `count` built prompts, each traced once (its `_Prompt` and replacement model)."""
    rows = set_rows(store, name).filter(pl.col("slug").is_not_null()).head(count)
    targets = set_targets(store, rows["slug"].to_list())
    traced = []
    for prompt, slug in rows.select("prompt", "slug").iter_rows():
        rm = trace_prompt(lm, prompt, named.transcoders, cfg)
        traced.append((_Prompt(slug, rm.n_positions, targets[slug], active_features(rm)), rm))
    return traced


def coactivations(features: pl.DataFrame, prompts: list[_Prompt]) -> np.ndarray:
    """Each feature's largest activation on each prompt [n, prompts] (0 where it does not fire)."""
    row = {key: i for i, key in enumerate(features.select("layer", "index").rows())}
    matrix = np.zeros((features.height, len(prompts)))
    for j, prompt in enumerate(prompts):
        for (layer, _, index), activation in prompt.active.items():
            i = row.get((layer, index))
            if i is not None:
                matrix[i, j] = max(matrix[i, j], activation)
    return matrix


def _members_on(features: pl.DataFrame, group: Group, length: int) -> list[tuple[int, int, int]]:
    """The group's members as (layer, position, index) on a prompt of `length` tokens."""
    chosen = features.filter(pl.col("node_id").is_in(group.node_ids))
    position = length - 1 - group.position
    return (
        [(layer, position, index) for layer, index in chosen.select("layer", "index").rows()] if position >= 0 else []
    )


def validate_set_groups(
    features: pl.DataFrame, groups: list[Group], traced: list, settings: ValidationSettings
) -> list[SetValidated]:
    """Each group measured on each traced prompt (`measure_group`), then summarized over the prompts."""
    rng = random.Random(settings.seed)
    validated, names = [], Counter()
    for group in groups:
        effects, controls, swaps = [], [], []
        for prompt, rm in traced:
            members = _members_on(features, group, prompt.length)
            if not members:
                continue
            measured = measure_group(rm, members, prompt.target, prompt.active, rng, settings)
            effects.append(measured.effect)
            controls.append(float(np.mean(measured.controls)))
            if measured.interchangeability is not None:
                swaps.append(measured.interchangeability)
        if not effects:
            continue
        effect, effect_ci = interval(effects)
        control, control_ci = interval(controls)
        interchangeability = float(np.mean(swaps)) if swaps else 0.0
        passed = (
            abs(effect) - effect_ci > control + control_ci and interchangeability >= settings.min_interchangeability
        )
        name = unique_name(group_name(features.filter(pl.col("node_id").is_in(group.node_ids)), group), names)
        validated.append(
            SetValidated(group, name, len(effects), effect, effect_ci, control, control_ci, interchangeability, passed)
        )
    return validated


def set_supernodes(
    store: Store,
    lm: LoadedModel,
    named: NamedTranscoders,
    cfg: AttributionConfig,
    name: str,
    selection: SetSelection = DEFAULT_SELECTION,
    grouping: GroupingSettings = DEFAULT_GROUPING,
    validation: ValidationSettings = DEFAULT_VALIDATION,
) -> list[SetValidated]:
    """Group the set's recurring features, validate the `max_groups` groups of most influence over its prompts,
    and save those that pass (`circuit_supernodes`, and on each of the set's graphs)."""
    features = recurring_features(store, name, selection)
    dictionaries = {parse_feature_id(f)[0] for f in features["feature_id"]}
    if dictionaries != {named.name}:
        raise CircuitDBError(
            f"set {name!r}'s graphs were built with {', '.join(sorted(dictionaries))}, not {named.name!r}"
        )
    traced = _traced(lm, named, cfg, store, name, selection.max_prompts)
    signals = set_signals(store, name, features, named.transcoders, coactivations(features, [p for p, _ in traced]))
    influence = dict(zip(features["node_id"], features["influence"], strict=True))
    groups = sorted(group_features(features, signals, grouping), key=lambda g: -sum(influence[n] for n in g.node_ids))
    validated = validate_set_groups(features, groups[: validation.max_groups], traced, validation)
    parameters = {"prompt_set": name, "selection": selection._asdict(), "grouping": grouping._asdict()}
    parameters = json.dumps(parameters | {"validation": validation._asdict()})
    passed = [item for item in validated if item.passed]
    write_partition(store, "circuit_supernodes", name, _rows(name, passed, parameters))
    _annotate_graphs(store, name, passed, parameters)
    return validated


def _rows(name: str, passed: list[SetValidated], parameters: str) -> pl.DataFrame:
    now = datetime.now(UTC)
    rows = [
        {
            "prompt_set": name,
            "name": item.name,
            "feature_ids": sorted(item.group.node_ids),
            "position_from_end": item.group.position,
            "layer_lo": item.group.layers[0],
            "layer_hi": item.group.layers[1],
            "prompts": item.prompts,
            "effect": item.effect,
            "effect_ci95": item.effect_ci95,
            "control": item.control,
            "control_ci95": item.control_ci95,
            "interchangeability": item.interchangeability,
            "parameters": parameters,
            "created_at": now,
        }  # fmt: skip
        for item in passed
    ]
    schema = {column: dtype for column, (dtype, _) in TABLES["circuit_supernodes"].columns.items()}
    return pl.DataFrame(rows, schema=schema)


def _annotate_graphs(store: Store, name: str, passed: list[SetValidated], parameters: str) -> None:
    """Each passing group as an automatic supernode of every set graph holding two or more of its members."""
    slugs = [slug for slug in set_rows(store, name)["slug"] if slug is not None]
    ends = read_table(store, "graphs", ["slug", "tokens"], slugs).select("slug", end=pl.col("tokens").list.len() - 1)
    nodes = read_table(store, "graph_nodes", ["slug", "node_id", "feature_id", "position"], slugs).join(ends, on="slug")
    retire_automatic(store, slugs, name)  # this set's earlier run, whatever its groups were named
    for item in passed:
        held = nodes.filter(
            pl.col("feature_id").is_in(item.group.node_ids)
            & (pl.col("end") - pl.col("position") == item.group.position)
        )
        extra = {"source": "auto", "parameters": parameters, "effect": item.effect, "control": item.control}
        extra |= {"control_ci95": item.control_ci95, "interchangeability": item.interchangeability}
        for slug, members in held.group_by("slug").agg("node_id").iter_rows():
            if len(members) >= 2:
                write_annotation(store, slug, "supernode", item.name, sorted(members), False, extra)

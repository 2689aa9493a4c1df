"""Automatic supernodes of a stored graph: its features grouped by what they do (`supernodes.py`), from what the
store holds beside the graph (decoder vectors, edges, labels), then each group validated by intervention on the
graph's prompt; the groups that pass are saved as supernodes marked automatic, with their effect sizes.

A group passes when
- zeroing it (its members at their position; the model run live unless `freeze_attention`) moves the target's logit more
  than random groups of the same size, layers and position do: |effect| above the random groups' mean |change|
  plus its 95% interval (`draws` groups);
- its members are interchangeable: the weakest member alone, set to carry the group's summed write along its
  own direction while the others are zeroed, undoes at least `min_interchangeability` of the group's effect
  (members that each write something else cannot stand in for one another; the weakest, since a group whose
  effect is one strong member's passes the test with that member carrying it).
"""

from __future__ import annotations

import json
import random
from collections import Counter
from typing import NamedTuple

import numpy as np
import polars as pl
import torch

from circuitdb.attribution.interventions import Intervention, intervene
from circuitdb.attribution.pipeline import NamedTranscoders, trace_prompt
from circuitdb.attribution.replacement_model import ReplacementModel
from circuitdb.attribution.transcoders import Transcoders
from circuitdb.circuits.diff import label_words
from circuitdb.circuits.supernodes import (
    DEFAULT_GROUPING,
    Group,
    GroupingSettings,
    decoder_similarity,
    group_features,
    label_similarity,
    output_similarity,
)
from circuitdb.config import AttributionConfig
from circuitdb.errors import CircuitDBError
from circuitdb.intervals import interval
from circuitdb.models import LoadedModel
from circuitdb.store import Store, layer_partition, parse_feature_id, read_table
from circuitdb.store.graphs import graph_row, retire_automatic, write_annotation


class ValidationSettings(NamedTuple):
    draws: int = 8
    """Random groups the effect is compared with."""
    seed: int = 0
    """Seed of the random groups."""
    min_interchangeability: float = 0.5
    """Least share of the effect the weakest member alone must undo."""
    max_groups: int = 20
    """Groups validated, those of most summed influence first."""
    freeze_attention: bool = False
    """Replay the prompt's attention patterns and norm scales (the graph's frozen paths) rather than run the model
    live: live by default, since frozen norm scales let a large ablation grow unchecked through later layers."""


DEFAULT_VALIDATION = ValidationSettings()


class Validated(NamedTuple):
    group: Group
    name: str
    effect: float
    """Change of the target's logit with the group zeroed."""
    control: float
    """Mean |change| of the random groups."""
    control_ci95: float
    interchangeability: float
    passed: bool


def graph_signals(
    store: Store, slug: str, transcoders: Transcoders
) -> tuple[pl.DataFrame, dict[str, np.ndarray | None]]:
    """The graph's feature nodes (node_id, feature_id, layer, position, index, influence, label, token) and the
    similarity signals between them: decoder directions (the transcoders', into the feature's own layer: the
    rows the store's vectors hold), signed outgoing edges (the nodes they feed), labels, co-activation over the
    corpus exemplars."""
    nodes = read_table(store, "graph_nodes", partitions=[slug])
    features = nodes.filter(pl.col("kind") == "feature")
    if features.height < 2:
        raise CircuitDBError(f"graph {slug} has fewer than two feature nodes to group")
    decoders = decoder_rows(transcoders, features["layer"].to_list(), features["index"].to_list())
    edges = read_table(store, "graph_edges", ["source", "target", "weight"], partitions=[slug])
    where = {node_id: i for i, node_id in enumerate(features["node_id"])}
    targets = {node_id: i for i, node_id in enumerate(nodes["node_id"])}
    outgoing = np.zeros((features.height, nodes.height))
    for source, target, weight in edges.filter(pl.col("source").is_in(list(where))).iter_rows():
        outgoing[where[source], targets[target]] = weight
    signals = {
        "decoder": decoder_similarity(decoders),
        "output": output_similarity(outgoing),
        "label": label_similarity(features["label"].fill_null("").to_list()),
        "coactivation": exemplar_coactivation(store, features),
    }
    return features, signals


def exemplar_coactivation(store: Store, features: pl.DataFrame) -> np.ndarray | None:
    """For one graph, co-activation over the corpus: the cosine of two features' activations on the corpus tokens
    their exemplar windows record (0 where a window does not reach), i.e. whether they fire on the same text;
    rows follow `features` (a feature at several positions shares its row). None without stored exemplars."""
    dictionary = parse_feature_id(features["feature_id"][0])[0]
    partitions = [layer_partition(dictionary, layer) for layer in sorted(set(features["layer"].to_list()))]
    columns = ["feature_id", "block", "position", "peak_offset", "values"]
    windows = read_table(store, "exemplars", columns, partitions).filter(
        pl.col("feature_id").is_in(features["feature_id"].unique().to_list())
    )
    if windows.is_empty():
        return None
    tokens = (
        windows.with_columns(offset=pl.int_ranges(pl.col("values").list.len()))
        .explode("values", "offset")
        .select(
            "feature_id",
            "block",
            token=pl.col("position") - pl.col("peak_offset") + pl.col("offset"),
            value=pl.col("values").cast(pl.Float64),
        )  # fmt: skip
        .filter(pl.col("value") > 0)
        .unique(["feature_id", "block", "token"])  # one feature's windows can overlap
    )
    norms = dict(tokens.group_by("feature_id").agg((pl.col("value") ** 2).sum().sqrt()).iter_rows())
    products = (
        tokens.join(tokens, on=["block", "token"], suffix="_b")
        .filter(pl.col("feature_id") < pl.col("feature_id_b"))
        .group_by("feature_id", "feature_id_b")
        .agg((pl.col("value") * pl.col("value_b")).sum())
    )
    ids = sorted(norms)
    where = {feature_id: i for i, feature_id in enumerate(ids)}
    cosine = np.eye(len(ids))
    for first, second, product in products.iter_rows():
        cosine[where[first], where[second]] = cosine[where[second], where[first]] = product / (
            norms[first] * norms[second]
        )
    rows = np.array([where.get(feature_id, -1) for feature_id in features["feature_id"]])
    known = rows >= 0  # a feature without exemplars (dead in the corpus) co-activates with nothing
    matrix = np.zeros((features.height, features.height))
    matrix[np.ix_(known, known)] = cosine[np.ix_(rows[known], rows[known])]
    return matrix


def decoder_rows(transcoders: Transcoders, layers: list[int], indices: list[int]) -> np.ndarray:
    """Each latent's decoder row into its own layer's MLP output [n, d] (one lookup per layer)."""
    rows = np.zeros((len(layers), transcoders.d_model))
    for layer in sorted(set(layers)):
        where = [i for i, lay in enumerate(layers) if lay == layer]
        written = transcoders.writes(layer, torch.tensor([indices[i] for i in where]))[layer]
        rows[where] = written.detach().double().cpu().numpy()
    return rows


LABEL_TEMPLATE_WORDS = frozenset({"on"})
"""Words every heuristic label holds ("on 'X' → logits"): they name no group."""


def group_name(members: pl.DataFrame, group: Group) -> str:
    """'auto: <up to 3 label words two or more members share> @<token> L<lo>-<hi>' (the most influential
    member's id where they share none)."""
    ranked = members.sort("influence", descending=True)
    words = Counter(
        w for label in ranked["label"].fill_null("") for w in label_words(label) if w not in LABEL_TEMPLATE_WORDS
    )
    shared = [word for word, count in words.most_common(3) if count >= 2]
    common = " ".join(shared) or ranked["feature_id"][0]
    token = (members["token"][0] or "").strip() or "·"
    return f"auto: {common} @{token} L{group.layers[0]}-{group.layers[1]}"[:100]


def _zeroed(members: list[tuple[int, int, int]]) -> list[Intervention]:
    return [Intervention(layer, index, "zero", positions=[position]) for layer, position, index in members]


def _change(rm: ReplacementModel, items: list[Intervention], target: int, frozen: bool) -> float:
    result = intervene(rm, items, freeze_attention=frozen)
    return float(result.logits[-1, target] - result.clean_logits[-1, target])


Active = dict[tuple[int, int, int], float]
"""The prompt's active features, (layer, position, index) → activation, in the replacement model's order."""


def active_features(rm: ReplacementModel) -> Active:
    f = rm.features
    keys = zip(f.layer.tolist(), f.position.tolist(), f.index.tolist(), strict=True)
    return dict(zip(keys, f.activation.tolist(), strict=True))


def _random_group(active: Active, members: list[tuple[int, int, int]], rng: random.Random) -> list[tuple]:
    """For each member, another active feature of its layer, at its position when there is one."""
    chosen = set(members)
    picked = []
    for layer, position, _ in members:
        same = [a for a in active if a[0] == layer and a[1] == position and a not in chosen and a not in picked]
        pool = same or [a for a in active if a[0] == layer and a not in chosen and a not in picked]
        if pool:
            picked.append(rng.choice(pool))
    return picked


def _carried_by_weakest(
    rm: ReplacementModel, activation: Active, members: list[tuple[int, int, int]]
) -> list[Intervention]:
    """The member of smallest write set to carry the group's summed write projected on its own decoder
    direction, the others zeroed (members sit at one position; a cross-layer decoder's own layer stands for it)."""
    device = rm.features.layer.device
    writes = []
    for layer, position, index in members:
        decoder = rm.transcoders.writes(layer, torch.tensor([index], device=device))[layer][0].detach().double()
        writes.append(activation[(layer, position, index)] * decoder)
    weakest = int(np.argmin([float(w.norm()) for w in writes]))
    layer, position, index = members[weakest]
    direction = writes[weakest] / activation[members[weakest]]
    total = torch.stack(writes).sum(0)
    carried = float(total @ direction / (direction @ direction))
    items = _zeroed([m for k, m in enumerate(members) if k != weakest])
    return [*items, Intervention(layer, index, "set", carried, positions=[position])]


class Measured(NamedTuple):
    """One group on one prompt: the target logit's changes."""

    effect: float
    """With the group zeroed."""
    controls: list[float]
    """|change| with each random group zeroed."""
    interchangeability: float | None
    """Share of the effect the weakest member alone undoes (None: fewer than two members active, or no effect)."""


def measure_group(
    rm: ReplacementModel,
    members: list[tuple[int, int, int]],
    target: int,
    active: Active,
    rng: random.Random,
    settings: ValidationSettings,
) -> Measured:
    """Zero the group (members as (layer, position, index)), then `draws` random groups like it, then let the
    weakest active member carry the group's write alone."""
    frozen = settings.freeze_attention
    effect = _change(rm, _zeroed(members), target, frozen)
    controls = [
        abs(_change(rm, _zeroed(_random_group(active, members, rng)), target, frozen)) for _ in range(settings.draws)
    ]
    firing = [m for m in members if m in active]  # over a set, a member may be silent on some prompt
    if len(firing) < 2 or not effect:
        return Measured(effect, controls, None)
    silent = _zeroed([m for m in members if m not in active])
    swapped = _change(rm, silent + _carried_by_weakest(rm, active, firing), target, frozen)
    return Measured(effect, controls, float(np.clip(1 - abs(swapped) / abs(effect), 0.0, 1.0)))


def unique_name(name: str, names: Counter) -> str:
    """`name`, or `name (2)` and so on when groups share it."""
    names[name] += 1
    return name if names[name] == 1 else f"{name} ({names[name]})"


def validate_groups(
    rm: ReplacementModel, features: pl.DataFrame, groups: list[Group], target: int, settings: ValidationSettings
) -> list[Validated]:
    """Each group's effect on the target's logit beside random groups', and its members' interchangeability."""
    keys = dict(zip(features["node_id"], features.select("layer", "position", "index").rows(), strict=True))
    rng = random.Random(settings.seed)
    active = active_features(rm)  # once: every group draws from it
    validated, names = [], Counter()
    for group in groups:
        measured = measure_group(rm, [keys[node_id] for node_id in group.node_ids], target, active, rng, settings)
        control, control_ci = interval(measured.controls)
        interchangeability = measured.interchangeability or 0.0
        passed = abs(measured.effect) > control + control_ci and interchangeability >= settings.min_interchangeability
        name = unique_name(group_name(features.filter(pl.col("node_id").is_in(group.node_ids)), group), names)
        validated.append(Validated(group, name, measured.effect, control, control_ci, interchangeability, passed))
    return validated


def auto_supernodes(
    store: Store,
    lm: LoadedModel,
    named: NamedTranscoders,
    cfg: AttributionConfig,
    slug: str,
    grouping: GroupingSettings = DEFAULT_GROUPING,
    validation: ValidationSettings = DEFAULT_VALIDATION,
) -> list[Validated]:
    """Group the graph's features, validate the `max_groups` groups of most influence on its prompt, and save
    those that pass as automatic supernodes (the graph's earlier automatic ones, from its own grouping, retired)."""
    row = graph_row(store, slug)
    if row["dictionaries"] != named.name:
        raise CircuitDBError(f"graph {slug} was built with {row['dictionaries']!r}, not {named.name!r}")
    features, signals = graph_signals(store, slug, named.transcoders)
    influence = dict(zip(features["node_id"], features["influence"], strict=True))
    groups = sorted(group_features(features, signals, grouping), key=lambda g: -sum(influence[n] for n in g.node_ids))
    logits = read_table(store, "graph_nodes", ["kind", "index", "activation"], partitions=[slug])
    target = int(logits.filter(pl.col("kind") == "logit").sort("activation", descending=True)["index"][0])
    rm = trace_prompt(lm, row["prompt"], named.transcoders, cfg)
    validated = validate_groups(rm, features, groups[: validation.max_groups], target, validation)
    parameters = json.dumps({"grouping": grouping._asdict(), "validation": validation._asdict()})
    retire_automatic(store, [slug], None)
    for item in validated:
        if item.passed:
            extra = {"source": "auto", "parameters": parameters, "effect": item.effect, "control": item.control}
            extra |= {"control_ci95": item.control_ci95, "interchangeability": item.interchangeability}
            write_annotation(store, slug, "supernode", item.name, sorted(item.group.node_ids), False, extra)
    return validated

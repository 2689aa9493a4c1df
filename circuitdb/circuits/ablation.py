"""Does a set's circuit matter? Zero chosen features (at every position) on every prompt of the set and measure
how the prompt's target moves, beside a control: as many random features of the same layers. Each prompt's
run is an `interventions` row carrying the set's name."""

from __future__ import annotations

import json
import math
import random
import uuid
from datetime import UTC, datetime
from typing import NamedTuple

import polars as pl
import torch

from circuitdb.attribution.interventions import Intervention, intervene
from circuitdb.attribution.pipeline import trace_prompt
from circuitdb.attribution.transcoders import Transcoders
from circuitdb.circuits.prompt_sets import set_rows
from circuitdb.config import AttributionConfig
from circuitdb.errors import CircuitDBError
from circuitdb.intervals import interval
from circuitdb.models import LoadedModel
from circuitdb.store import Store, parse_feature_id, read_table, write_partition


class SetEffect(NamedTuple):
    """What zeroing `features` did over the set's prompts."""

    features: list[str]
    prompts: int
    probability_change: float
    """Mean change of the target's probability."""
    probability_ci95: float
    logit_change: float
    """Mean change of the target's logit."""
    logit_ci95: float
    flipped: float
    """Share of prompts whose most probable next token changed."""
    diverged: int = 0
    """Prompts left out because the intervened run's logits were not finite (frozen norm scales let a large
    ablation grow through later layers; live attention renormalizes)."""


class Ablation(NamedTuple):
    circuit: SetEffect
    control: SetEffect
    run_id: str


def top_recurring(store: Store, name: str, count: int) -> list[str]:
    """The `count` features that recur in most of the set's graphs (then by mean influence)."""
    if read_table(store, "circuit_sets", partitions=[name]).is_empty():
        raise CircuitDBError(f"prompt set {name!r} is not aggregated yet: `circuitdb circuit show {name}` does it")
    frame = read_table(store, "circuit_features", ["feature_id"], partitions=[name])
    if frame.is_empty():
        raise CircuitDBError(f"no feature recurs in the graphs of prompt set {name!r}: give --feature")
    return frame["feature_id"].head(count).to_list()


def random_control(features: list[str], n_latents: int, seed: int) -> list[str]:
    """As many features as `features`, each a random other latent of the same dictionary and layer."""
    rng = random.Random(seed)
    chosen = set(features)
    control = []
    for feature_id in features:
        dictionary, layer, _ = parse_feature_id(feature_id)
        while True:
            candidate = f"{dictionary}/{layer}/{rng.randrange(n_latents)}"
            if candidate not in chosen and candidate not in control:
                control.append(candidate)
                break
    return control


def set_targets(store: Store, slugs: list[str]) -> dict[str, int]:
    """Each graph's first target token: its most probable logit node."""
    logits = read_table(store, "graph_nodes", ["slug", "kind", "index", "activation"], partitions=slugs)
    logits = logits.filter(pl.col("kind") == "logit").sort("activation", descending=True).unique("slug", keep="first")
    return dict(zip(logits["slug"], logits["index"], strict=True))


def ablate_set(
    store: Store,
    lm: LoadedModel,
    transcoders: Transcoders,
    cfg: AttributionConfig,
    name: str,
    features: list[str],
    freeze_attention: bool,
    seed: int = 0,
) -> Ablation:
    """Zero `features` (one dictionary set: that of `transcoders`) on each built prompt of set `name`, then as
    many random features of the same layers; returns both effects (mean ± 95% interval over prompts)."""
    if not features:
        raise CircuitDBError("give the features to ablate")
    rows = set_rows(store, name).filter(pl.col("slug").is_not_null())
    if rows.is_empty():
        raise CircuitDBError(f"no graph of prompt set {name!r} is built yet")
    targets = set_targets(store, rows["slug"].to_list())
    run_id = uuid.uuid4().hex[:12]
    measured: dict[str, list[tuple[float, float, bool]]] = {"circuit": [], "control": []}
    records, control = [], None
    for prompt, slug in rows.select("prompt", "slug").iter_rows():
        rm = trace_prompt(lm, prompt, transcoders, cfg)
        control = control or random_control(features, rm.n_latents, seed)
        for arm, chosen in (("circuit", features), ("control", control)):
            items = [Intervention(layer, index, "zero") for _, layer, index in map(parse_feature_id, chosen)]
            result = intervene(rm, items, freeze_attention=freeze_attention)
            change = _target_change(result.clean_logits[-1], result.logits[-1], targets[slug])
            measured[arm].append(change)
            records.append(_record(run_id, name, prompt, chosen, freeze_attention, lm, result, targets[slug], change))
    write_partition(store, "interventions", f"{name}.{run_id}", pl.DataFrame(records))
    circuit, control_effect = (_effect(f, measured[arm]) for arm, f in (("circuit", features), ("control", control)))
    return Ablation(circuit, control_effect, run_id)


def _target_change(clean: torch.Tensor, after: torch.Tensor, target: int) -> tuple[float, float, bool]:
    """(probability change, logit change, whether the top token changed) of the target token."""
    p_before, p_after = clean.float().softmax(-1)[target], after.float().softmax(-1)[target]
    return float(p_after - p_before), float(after[target] - clean[target]), bool(clean.argmax() != after.argmax())


def _effect(features: list[str], changes: list[tuple[float, float, bool]]) -> SetEffect:
    """Mean changes over the prompts whose intervened logits stayed finite (NaN when none did)."""
    finite = [c for c in changes if math.isfinite(c[0]) and math.isfinite(c[1])]
    if not finite:
        nan = float("nan")
        return SetEffect(features, 0, nan, nan, nan, nan, nan, len(changes))
    probability, probability_ci = interval([c[0] for c in finite])
    logit, logit_ci = interval([c[1] for c in finite])
    flipped = sum(c[2] for c in finite) / len(finite)
    return SetEffect(
        features, len(finite), probability, probability_ci, logit, logit_ci, flipped, len(changes) - len(finite)
    )


def _record(run_id, name, prompt, features, frozen, lm, result, target, change) -> dict:
    """The prompt's `interventions` row; `logit_changes` holds the target's change."""
    decode = lm.tokenizer.decode
    before, after = int(result.clean_logits[-1].argmax()), int(result.logits[-1].argmax())
    target_change = {"token": decode([target]), "change": change[0], "logit_change": change[1]}
    return {
        "run_id": run_id,
        "prompt": prompt,
        "features": features,
        "mode": "zero",
        "value": 0.0,
        "positions": [],
        "freeze_attention": frozen,
        "top_token_before": decode([before]),
        "top_token_after": decode([after]),
        "logit_changes": json.dumps([target_change]),
        "generated": "",
        "created_at": datetime.now(UTC),
        "node_positions": None,
        "slug": None,
        "prompt_set": name,
    }

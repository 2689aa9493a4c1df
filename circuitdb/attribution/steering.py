"""Steering from the CLI: intervene on stored features by id and record the run in `interventions`."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import NamedTuple

import polars as pl

from circuitdb.attribution.interventions import Intervention, intervene
from circuitdb.attribution.pipeline import trace_prompt
from circuitdb.attribution.transcoders import Transcoders
from circuitdb.config import AttributionConfig
from circuitdb.errors import CircuitDBError
from circuitdb.models import LoadedModel
from circuitdb.store import Store, parse_feature_id, write_partition


class Clamp(NamedTuple):
    """What happens to the steered features: `Intervention.mode` and its value."""

    mode: str
    value: float

    @classmethod
    def from_options(cls, scale: float | None, set_to: float | None) -> Clamp:
        """`--scale X` or `--set X`; neither (or a scale of 0) zeroes the features."""
        if scale is not None and set_to is not None:
            raise CircuitDBError("give --scale or --set, not both")
        if set_to is not None:
            return cls("set", set_to)
        return cls("scale", scale) if scale else cls("zero", 0.0)


class Steered(NamedTuple):
    """One feature acted on, where: `positions` None is every position but BOS (a graph's node is one)."""

    feature_id: str
    positions: list[int] | None


class SteeringRun(NamedTuple):
    """What to do on a prompt: which features, how, with attention frozen or live, and how much to generate."""

    prompt: str
    steered: list[Steered]
    clamp: Clamp
    freeze_attention: bool
    generate: int
    graph: str | None = None
    """The graph whose nodes were steered (its page lists the run), if any."""


def dictionary_set(feature_ids: list[str], action: str) -> str:
    """The one dictionary set of `feature_ids` (an intervention loads one set's transcoders); `action` (steer,
    ablate) words the error."""
    if not feature_ids:
        raise CircuitDBError(f"{action} at least one feature")
    dictionaries = {parse_feature_id(feature_id)[0] for feature_id in feature_ids}
    if len(dictionaries) != 1:
        raise CircuitDBError(f"{action} features of one dictionary set at a time, got {sorted(dictionaries)}")
    return dictionaries.pop()


def steered_set(run: SteeringRun) -> str:
    """The one dictionary set whose features `run` steers."""
    return dictionary_set([item.feature_id for item in run.steered], "steer")


def steer_prompt(
    store: Store, lm: LoadedModel, transcoders: Transcoders, cfg: AttributionConfig, run: SteeringRun, k: int
) -> tuple[dict, list[tuple[str, float, float, float]]]:
    """Run the intervention with `transcoders` (the set `steered_set(run)` names); return the `interventions`
    row and (token, p before, p after, change) rows for the tokens most probable before or after, most
    probable after first."""
    steered_set(run)
    parsed = [parse_feature_id(item.feature_id) for item in run.steered]
    mode, value = run.clamp
    prompt, positions = run.prompt, sorted({p for item in run.steered for p in item.positions or []})
    rm = trace_prompt(lm, prompt, transcoders, cfg)
    items = [
        Intervention(layer, index, mode, value, item.positions)
        for (_, layer, index), item in zip(parsed, run.steered, strict=True)
    ]
    result = intervene(rm, items, freeze_attention=run.freeze_attention, generate=run.generate)
    before, after = result.clean_logits[-1].float().softmax(-1), result.logits[-1].float().softmax(-1)
    shown = sorted(set(before.topk(k).indices.tolist()) | set(after.topk(k).indices.tolist()), key=lambda i: -after[i])
    decode = lm.tokenizer.decode
    changes = [(decode([i]), float(before[i]), float(after[i]), float(after[i] - before[i])) for i in shown]
    row = {
        "run_id": uuid.uuid4().hex[:12],
        "prompt": prompt,
        "features": [item.feature_id for item in run.steered],
        "mode": mode,
        "value": value,
        "positions": positions,
        "node_positions": [item.positions or [] for item in run.steered],
        "freeze_attention": run.freeze_attention,
        "top_token_before": decode([int(before.argmax())]),
        "top_token_after": decode([int(after.argmax())]),
        "logit_changes": json.dumps(
            [dict(zip(("token", "p_before", "p_after", "change"), c, strict=True)) for c in changes]
        ),
        "generated": decode(result.generated) if result.generated else "",
        "slug": run.graph,
        "created_at": datetime.now(UTC),
    }
    write_partition(store, "interventions", row["run_id"], pl.DataFrame([row]))
    return row, changes

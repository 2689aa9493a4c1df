"""Steering from the CLI: intervene on stored features by id and record the run in `interventions`."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import NamedTuple

import polars as pl

from circuitdb.attribution.interventions import Intervention, intervene
from circuitdb.attribution.pipeline import trace_prompt
from circuitdb.attribution.transcoders import stored_transcoders
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


def steer_prompt(
    store: Store,
    lm: LoadedModel,
    cfg: AttributionConfig,
    prompt: str,
    feature_ids: list[str],
    mode: str,
    value: float,
    positions: list[int] | None,
    freeze_attention: bool,
    generate: int,
    k: int,
) -> tuple[dict, list[tuple[str, float, float, float]]]:
    """Run the intervention; return the `interventions` row and (token, p before, p after, change) rows
    for the tokens most probable before or after, most probable after first."""
    parsed = [parse_feature_id(feature_id) for feature_id in feature_ids]
    dictionaries = {dictionary for dictionary, _, _ in parsed}
    if len(dictionaries) != 1:
        raise CircuitDBError(f"steer features of one dictionary set at a time, got {sorted(dictionaries)}")
    rm = trace_prompt(lm, prompt, stored_transcoders(store, dictionaries.pop()), cfg)
    items = [Intervention(layer, index, mode, value, positions) for _, layer, index in parsed]
    result = intervene(rm, items, freeze_attention=freeze_attention, generate=generate)
    before, after = result.clean_logits[-1].float().softmax(-1), result.logits[-1].float().softmax(-1)
    shown = sorted(set(before.topk(k).indices.tolist()) | set(after.topk(k).indices.tolist()), key=lambda i: -after[i])
    decode = lm.tokenizer.decode
    changes = [(decode([i]), float(before[i]), float(after[i]), float(after[i] - before[i])) for i in shown]
    row = {
        "run_id": uuid.uuid4().hex[:12],
        "prompt": prompt,
        "features": feature_ids,
        "mode": mode,
        "value": value,
        "positions": positions or [],
        "freeze_attention": freeze_attention,
        "top_token_before": decode([int(before.argmax())]),
        "top_token_after": decode([int(after.argmax())]),
        "logit_changes": json.dumps(
            [dict(zip(("token", "p_before", "p_after", "change"), c, strict=True)) for c in changes]
        ),
        "generated": decode(result.generated) if result.generated else "",
        "created_at": datetime.now(UTC),
    }
    write_partition(store, "interventions", row["run_id"], pl.DataFrame([row]))
    return row, changes

"""Sparsity sweeps: the same recipe trained at several k (and seeds) on the stored activations of one
layer, each point evaluated on the held-out split into the `sweeps` table (summarized per k by
circuitdb/store/sweeps.py). Optionally each point's densest latents are explained and scored, so that
interpretability is compared at equal L0 too."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import NamedTuple

import polars as pl
from tqdm.auto import tqdm

from circuitdb.config import DictionariesConfig
from circuitdb.corpus import TokenizedCorpus
from circuitdb.dictionaries.data import ActivationSource
from circuitdb.dictionaries.pipeline import held_out_metrics
from circuitdb.dictionaries.train import train_dictionary
from circuitdb.errors import CircuitDBError
from circuitdb.explanations.chat import ChatModel
from circuitdb.explanations.explain import explain_and_score_coder, held_out
from circuitdb.models import LoadedModel
from circuitdb.store import Store, layer_partition, write_partition
from circuitdb.store.schemas import EXPLANATION_SUMMARY
from circuitdb.store.sweeps import METRICS


class PointExplanations(NamedTuple):
    """Explanations at every sweep point."""

    chat: ChatModel
    """Explainer, and scorer of its explanations."""
    features: int
    """Densest live latents explained per point."""
    window: int = 16
    """Tokens per context the scorer judges."""


def point_partition(name: str, layer: int, skip: bool, k: int, seed: int) -> str:
    """The `sweeps` partition of one point: a re-run of the point replaces it, other points stay."""
    return f"{layer_partition(name, layer)}-{'skip' if skip else 'noskip'}-k{k:05d}-seed{seed:03d}"


def sweep_layer(
    store: Store,
    lm: LoadedModel,
    corpus: TokenizedCorpus,
    cfg: DictionariesConfig,
    layer: int,
    ks: list[int],
    seeds: list[int],
    skips: list[bool] | None = None,
    explain: PointExplanations | None = None,
    progress: bool = True,
) -> pl.DataFrame:
    """Train `cfg`'s recipe at every k × seed (× with and without the skip connection, when `skips` lists
    both; default the recipe's own) on `layer`; one `sweeps` row per point, each its own partition, with
    the explanation scores of `explain` when given. Returns the rows."""
    skips = [cfg.dictionary.skip] if skips is None else skips
    if not ks or not seeds or not skips:
        raise CircuitDBError("a sweep needs at least one k and one seed")
    for k in ks:
        if not 0 < k <= cfg.dictionary.n_latents:
            raise CircuitDBError(f"k must be in 1..{cfg.dictionary.n_latents} (n_latents), got {k}")
    if any(skips) and cfg.dictionary.kind != "plt":
        raise CircuitDBError(f"a skip connection needs a transcoder (kind plt), the recipe is {cfg.dictionary.kind}")
    input_hook, target_hook = f"{cfg.hook_in}.{layer}", f"{cfg.hook_out}.{layer}"
    train = ActivationSource(
        store.activation_run(f"{corpus.name}-train"), [input_hook], [target_hook], cfg.train.exclude_first_position
    )
    eval_source = ActivationSource(store.activation_run(f"{corpus.name}-eval"), [input_hook], [target_hook])
    if explain is not None:  # the same text for every point: statistics over train, scores on eval
        statistics_source = ActivationSource(store.activation_run(f"{corpus.name}-train"), [input_hook], [])
        statistics_data = (statistics_source, corpus.split("train"))
        scoring_data = held_out(lm, corpus, input_hook, explain.window)
    rows = []
    points = [(skip, k, seed) for skip in skips for k in ks for seed in seeds]
    for skip, k, seed in tqdm(points, desc=f"sweep layer {layer}", unit="point", disable=not progress):
        recipe = dataclasses.replace(cfg.dictionary, k=k, skip=skip)
        result = train_dictionary(recipe, train, dataclasses.replace(cfg.train, seed=seed), None, progress=False)
        metrics = held_out_metrics(result.coder, lm, corpus, eval_source, input_hook, cfg.ce_eval_blocks)
        explained = dict.fromkeys(EXPLANATION_SUMMARY)
        if explain is not None:
            explained = explain_and_score_coder(
                explain.chat, lm, result.coder, statistics_data, scoring_data, explain.features, (cfg.name, layer)
            )
        row = {
            "dictionary": cfg.name,
            "layer": layer,
            "kind": recipe.kind,
            "skip": skip,
            "n_latents": recipe.n_latents,
            "k": k,
            "seed": seed,
            **{m: float(metrics[m]) for m in METRICS},
            **explained,
            "created_at": datetime.now(UTC),
        }
        write_partition(store, "sweeps", point_partition(cfg.name, layer, skip, k, seed), pl.DataFrame([row]))
        rows.append(row)
    return pl.DataFrame(rows)

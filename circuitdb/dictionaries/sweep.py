"""Sparsity sweeps: the same recipe trained at several k (and seeds) on the stored activations of one
layer, each point evaluated on the held-out split; a summary per k gives the mean and a 95% interval
over seeds (Student's t), as comparisons of dictionaries at equal L0 need."""

from __future__ import annotations

import dataclasses
import math
import statistics
from datetime import UTC, datetime

import polars as pl
from tqdm.auto import tqdm

from circuitdb.config import DictionariesConfig
from circuitdb.corpus import TokenizedCorpus
from circuitdb.dictionaries.data import ActivationSource
from circuitdb.dictionaries.pipeline import held_out_metrics
from circuitdb.dictionaries.train import train_dictionary
from circuitdb.errors import CircuitDBError
from circuitdb.models import LoadedModel
from circuitdb.store import Store, write_partition

METRICS = ("fvu", "fvu_excl_pos0", "l0", "dead_frac", "delta_ce", "kl")
"""What each sweep point records, and the summary averages."""
_T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}
"""Student's t at 97.5% by degrees of freedom (a two-sided 95% interval); 1.96 past 9."""


def sweep_layer(
    store: Store,
    lm: LoadedModel,
    corpus: TokenizedCorpus,
    cfg: DictionariesConfig,
    layer: int,
    ks: list[int],
    seeds: list[int],
    progress: bool = True,
) -> pl.DataFrame:
    """Train `cfg`'s recipe at every k × seed on `layer`; one `sweeps` row per point, written as the
    partition `<name>-layer-<L>` (a new sweep of the layer replaces it). Returns the rows."""
    if not ks or not seeds:
        raise CircuitDBError("a sweep needs at least one k and one seed")
    for k in ks:
        if not 0 < k <= cfg.dictionary.n_latents:
            raise CircuitDBError(f"k must be in 1..{cfg.dictionary.n_latents} (n_latents), got {k}")
    input_hook, target_hook = f"{cfg.hook_in}.{layer}", f"{cfg.hook_out}.{layer}"
    train = ActivationSource(
        store.activation_run(f"{corpus.name}-train"), [input_hook], [target_hook], cfg.train.exclude_first_position
    )
    held_out = ActivationSource(store.activation_run(f"{corpus.name}-eval"), [input_hook], [target_hook])
    rows = []
    points = [(k, seed) for k in ks for seed in seeds]
    for k, seed in tqdm(points, desc=f"sweep layer {layer}", unit="point", disable=not progress):
        recipe = dataclasses.replace(cfg.dictionary, k=k)
        result = train_dictionary(recipe, train, dataclasses.replace(cfg.train, seed=seed), None, progress=False)
        metrics = held_out_metrics(result.coder, lm, corpus, held_out, input_hook, cfg.ce_eval_blocks)
        rows.append(
            {
                "dictionary": cfg.name,
                "layer": layer,
                "kind": recipe.kind,
                "skip": recipe.skip,
                "n_latents": recipe.n_latents,
            }
            | {"k": k, "seed": seed, **{m: float(metrics[m]) for m in METRICS}, "created_at": datetime.now(UTC)}
        )
    frame = pl.DataFrame(rows)
    write_partition(store, "sweeps", f"{cfg.name}-layer-{layer:03d}", frame)
    return frame


def interval(values: list[float]) -> tuple[float, float]:
    """(mean, half-width of the two-sided 95% interval) of independent runs; 0 width for a single run."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, 0.0
    t = _T_975.get(len(values) - 1, 1.96)
    return mean, t * statistics.stdev(values) / math.sqrt(len(values))


def summary(rows: pl.DataFrame) -> pl.DataFrame:
    """Per k: the number of seeds and each metric's mean and 95% half-width, by increasing k."""
    out = []
    for k in sorted(rows["k"].unique().to_list()):
        at_k = rows.filter(pl.col("k") == k)
        entry = {"k": k, "seeds": at_k.height}
        for metric in METRICS:
            mean, half = interval(at_k[metric].to_list())
            entry |= {metric: mean, f"{metric}_ci95": half}
        out.append(entry)
    return pl.DataFrame(out)

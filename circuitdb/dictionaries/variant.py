"""Another dictionary set beside the configured one, trained on the same stored activations (transcoders with or
without the skip connection, another k or width): what a graph diff of two dictionary sets compares. Each layer
is trained, evaluated, its features summarized and its decoder vectors stored, as the pipeline does for the
configured set; a layer already trained with the same recipe is kept."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import polars as pl

from circuitdb.config import DictionariesConfig
from circuitdb.corpus import TokenizedCorpus
from circuitdb.dictionaries.pipeline import build_layer_dictionary
from circuitdb.dictionaries.stored import stored_dictionary
from circuitdb.errors import CircuitDBError
from circuitdb.features import build_layer_features
from circuitdb.models import LoadedModel
from circuitdb.store import Store, read_table

VECTOR_COLUMNS = ["feature_id", "dictionary", "layer", "index", "label", "density"]
"""The `features` columns `write_vectors` stores beside each decoder direction."""


def variant_config(base: DictionariesConfig, name: str, skip: bool | None, k: int | None, n_latents: int | None):
    """The configured recipe under another name with the given changes (None: as configured)."""
    if name == base.name:
        raise CircuitDBError(
            f"{name!r} is the configured dictionary set (`circuitdb build` trains it): give another name"
        )
    if base.dictionary.kind != "plt":
        raise CircuitDBError("a variant set is of per-layer transcoders (dictionaries.dictionary.kind: plt)")
    changes = {"skip": skip, "k": k, "n_latents": n_latents}
    dictionary = replace(
        base.dictionary, **{key: value for key, value in changes.items() if value is not None}
    )  # checked
    return replace(base, name=name, dictionary=dictionary)


def train_variant_set(
    store: Store,
    lm: LoadedModel,
    corpus: TokenizedCorpus,
    cfg: DictionariesConfig,
    layers: list[int],
    progress: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Train set `cfg.name` on `layers`: dictionaries rows, features and exemplars, decoder vectors; returns the
    `dictionaries` rows."""
    from circuitdb.store.vectors import ensure_index, write_vectors  # LanceDB takes seconds to import

    rows = []
    for layer in layers:
        row = build_layer_dictionary(store, lm, corpus, layer, cfg, progress=False)
        build_layer_features(store, lm, corpus, cfg.name, layer)
        coder, _ = stored_dictionary(store, cfg.name, layer)
        features = read_table(store, "features", VECTOR_COLUMNS).filter(
            (pl.col("dictionary") == cfg.name) & (pl.col("layer") == layer)
        )
        write_vectors(store, cfg.name, layer, coder.W_dec, features)
        rows.append(row)
        if progress is not None:
            progress(row)
    ensure_index(store)
    return rows

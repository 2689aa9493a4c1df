"""The dictionary stage for one layer: train on the stored activations, evaluate, save, record.

Kept out of `assets/` so the CLI, the benchmark and notebooks run exactly what the pipeline runs.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from circuitdb.config import DictionariesConfig
from circuitdb.corpus import TokenizedCorpus
from circuitdb.dictionaries.data import ActivationSource
from circuitdb.dictionaries.formats import save_dictionary
from circuitdb.dictionaries.metrics import dictionary_splice, reconstruction_metrics, spliced_metrics
from circuitdb.dictionaries.train import train_dictionary
from circuitdb.models import LoadedModel
from circuitdb.store import Store, write_partition


def build_layer_dictionary(
    store: Store, lm: LoadedModel, corpus: TokenizedCorpus, layer: int, cfg: DictionariesConfig, progress: bool = True
) -> dict:
    """Train, evaluate and save the dictionary of `layer`; write its `dictionaries` row and return it."""
    input_hook, target_hook = f"{cfg.hook_in}.{layer}", f"{cfg.hook_out}.{layer}"
    train_source = ActivationSource(
        store.activation_run(f"{corpus.name}-train"), [input_hook], [target_hook], cfg.train.exclude_first_position
    )
    eval_source = ActivationSource(store.activation_run(f"{corpus.name}-eval"), [input_hook], [target_hook])
    checkpoint = store.root / "checkpoints" / cfg.name / f"layer_{layer}.pt"
    started = time.perf_counter()
    result = train_dictionary(cfg.dictionary, train_source, cfg.train, checkpoint=checkpoint, progress=progress)
    seconds = time.perf_counter() - started
    inputs, targets = eval_source.sequences()
    metrics = reconstruction_metrics(result.coder, inputs[:, :, 0], targets[:, :, 0])
    splice = dictionary_splice(lm, result.coder.to(lm.device), input_hook)
    delta_ce, kl = spliced_metrics(lm, splice, corpus.split("eval")[: cfg.ce_eval_blocks])
    row = {
        "name": cfg.name,
        "layer": layer,
        "kind": cfg.dictionary.kind,
        "activation": cfg.dictionary.activation,
        "input_hook": input_hook,
        "target_hook": target_hook,
        "model": lm.name,
        "corpus": corpus.name,
        "n_latents": cfg.dictionary.n_latents,
        "k": cfg.dictionary.k,
        "train_tokens": result.tokens,
        "train_seconds": seconds,
        **metrics,
        "delta_ce": delta_ce,
        "kl": kl,
        "fvu_curve": [h["fvu"] for h in result.history],
        "path": str(Path("dictionaries") / cfg.name / f"layer_{layer}"),
        "created_at": datetime.now(UTC),
    }
    meta = {k: v for k, v in row.items() if k not in ("fvu_curve", "created_at", "path")}
    save_dictionary(result.coder, store.dictionary_dir(cfg.name, layer), meta)
    write_partition(store, "dictionaries", f"{cfg.name}-layer-{layer:03d}", pl.DataFrame([row]))
    checkpoint.unlink(missing_ok=True)  # the saved dictionary supersedes it
    return row

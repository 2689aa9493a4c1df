"""The dictionary stage: train a layer's dictionary on the stored activations (or import a published
set), evaluate, save, record.

Kept out of `assets/` so the CLI, the benchmark and notebooks run exactly what the pipeline runs.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import torch

from circuitdb.config import CrossLayerConfig, DictionariesConfig
from circuitdb.corpus import TokenizedCorpus
from circuitdb.dictionaries.data import ActivationSource
from circuitdb.dictionaries.formats import DictionarySet, save_dictionary
from circuitdb.dictionaries.metrics import (
    clt_splice,
    dictionary_splice,
    reconstruction_metrics,
    spliced_metrics,
    summarize,
)
from circuitdb.dictionaries.sparse_coder import SparseCoder
from circuitdb.dictionaries.stored import load_stored
from circuitdb.dictionaries.train import TrainResult, train_dictionary
from circuitdb.errors import CircuitDBError
from circuitdb.models import LoadedModel
from circuitdb.store import TABLES, Store, layer_partition, read_table, write_partition
from circuitdb.store.finished import fingerprint, is_finished, record_finished


def _row(cfg, layer: int, lm: LoadedModel, corpus: TokenizedCorpus, result, seconds: float, path: str) -> dict:
    trained = result.coder.cfg
    return {
        "name": cfg.name,
        "layer": layer,
        "kind": trained.kind,
        "activation": trained.activation,
        "model": lm.name,
        "corpus": corpus.name,
        "n_latents": trained.n_latents,
        "k": trained.k,
        "train_tokens": result.tokens,
        "train_seconds": seconds,
        "fvu_curve": [h["fvu"] for h in result.history],
        "path": path,
        "created_at": datetime.now(UTC),
    }


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
    partition = layer_partition(cfg.name, layer)
    imported = _imported(store, cfg.name, layer, input_hook, target_hook)
    shards = train_source.shard_checksums + eval_source.shard_checksums
    recipe = fingerprint(
        asdict(cfg.dictionary), asdict(cfg.train), cfg.ce_eval_blocks, input_hook, target_hook, lm.name, shards
    )
    if imported is None and is_finished(store, "dictionaries", partition, recipe):
        return (
            read_table(store, "dictionaries")
            .filter((pl.col("name") == cfg.name) & (pl.col("layer") == layer))
            .row(0, named=True)
        )
    started = time.perf_counter()
    if imported is not None:  # a published dictionary imported under this name: evaluated, never trained over
        result, provenance = TrainResult(imported[0]), imported[1]
    else:
        result, provenance = train_dictionary(cfg.dictionary, train_source, cfg.train, checkpoint, progress), {}
    seconds = time.perf_counter() - started
    path = str(Path("dictionaries") / cfg.name / f"layer_{layer}")
    row = _row(cfg, layer, lm, corpus, result, seconds, path)
    row |= {"input_hook": input_hook, "target_hook": target_hook}
    row |= held_out_metrics(result.coder, lm, corpus, eval_source, input_hook, cfg.ce_eval_blocks)
    meta = {k: v for k, v in row.items() if k not in ("fvu_curve", "created_at", "path")} | provenance
    folder = store.dictionary_dir(cfg.name, layer)
    save_dictionary(result.coder, folder, meta)
    write_partition(store, "dictionaries", partition, pl.DataFrame([row]))
    checkpoint.unlink(missing_ok=True)  # the saved dictionary supersedes it
    outputs = [folder / "weights.safetensors", folder / "config.json", store.table_file("dictionaries", partition)]
    record_finished(store, "dictionaries", partition, recipe, outputs)
    return row


def held_out_metrics(
    coder: SparseCoder, lm: LoadedModel, corpus: TokenizedCorpus, source: ActivationSource, hook: str, ce_blocks: int
) -> dict:
    """FVU (both ways), L0, dead fraction on the held-out activations, and ΔCE/KL with the dictionary
    spliced in on `ce_blocks` held-out blocks."""
    inputs, targets = source.sequences()
    metrics = reconstruction_metrics(coder, inputs[:, :, 0], targets[:, :, 0])
    splice = dictionary_splice(lm, coder.to(lm.device), hook)
    delta_ce, kl = spliced_metrics(lm, splice, corpus.split("eval")[:ce_blocks])
    return {**metrics, "delta_ce": delta_ce, "kl": kl}


def _imported(store: Store, name: str, layer: int, input_hook: str, target_hook: str):
    """(coder, provenance) of a dictionary `dictionary import` put at (name, layer), or None."""
    folder = store.dictionary_dir(name, layer)
    if not (folder / "config.json").is_file():
        return None
    meta = json.loads((folder / "config.json").read_text())  # the weights are read only when imported
    if "imported_from" not in meta:
        return None
    if (meta["input_hook"], meta["target_hook"]) != (input_hook, target_hook):
        raise CircuitDBError(
            f"{folder} was imported as {meta['input_hook']} → {meta['target_hook']}; the configured dictionaries "
            f"map {input_hook} → {target_hook} (set dictionaries.hook_in/hook_out, or import under another name)"
        )
    coder, _ = load_stored(store, folder.relative_to(store.root).as_posix())
    return coder, {k: meta[k] for k in ("imported_from", "imported_format")}


def build_cross_layer_transcoder(
    store: Store,
    lm: LoadedModel,
    corpus: TokenizedCorpus,
    layers: list[int],
    cfg: CrossLayerConfig,
    progress: bool = True,
) -> list[dict]:
    """Train one CLT over `layers` (mlp_in.l → mlp_out.l' for l' ≥ l), evaluate, save; one row per target layer.

    Reconstruction metrics are per target layer; ΔCE/KL replace every covered MLP at once, so
    they are the same on every row.
    """
    inputs_hooks, target_hooks = [f"mlp_in.{layer}" for layer in layers], [f"mlp_out.{layer}" for layer in layers]
    run = store.activation_run(f"{corpus.name}-train")
    source = ActivationSource(run, inputs_hooks, target_hooks, cfg.train.exclude_first_position)
    checkpoint = store.root / "checkpoints" / cfg.name / "clt.pt"
    started = time.perf_counter()
    result = train_dictionary(cfg.dictionary, source, cfg.train, checkpoint=checkpoint, progress=progress)
    seconds = time.perf_counter() - started
    held_out = ActivationSource(store.activation_run(f"{corpus.name}-eval"), inputs_hooks, target_hooks)
    inputs, targets = held_out.sequences()
    splice = clt_splice(lm, result.coder.to(lm.device), layers)
    delta_ce, kl = spliced_metrics(lm, splice, corpus.split("eval")[: cfg.ce_eval_blocks])
    path = str(Path("dictionaries") / cfg.name / "clt")
    with torch.no_grad():
        recon, latents = result.coder(inputs.flatten(0, 1))
    recon = recon.view_as(targets)
    latents = latents.view(*targets.shape[:3], -1)
    rows = []
    for index, layer in enumerate(layers):
        metrics = summarize(targets[:, :, index], recon[:, :, index], latents[:, :, index] > 0)
        row = _row(cfg, layer, lm, corpus, result, seconds, path)
        row |= {"input_hook": inputs_hooks[index], "target_hook": target_hooks[index], **metrics}
        rows.append(row | {"delta_ce": delta_ce, "kl": kl})
    save_dictionary(result.coder, store.root / path, {"layers": layers, "model": lm.name, "corpus": corpus.name})
    write_partition(store, "dictionaries", f"{cfg.name}-clt", pl.DataFrame(rows))
    checkpoint.unlink(missing_ok=True)
    return rows


def import_dictionary_set(store: Store, lm: LoadedModel, dictionaries: DictionarySet) -> list[dict]:
    """Save a set read from outside in our format under `dictionaries/<name>/` and record one row per layer,
    replacing an older set of that name. Training and held-out columns stay empty (nothing was trained
    here, and metrics need the store's activations). Statistics, vectors and graphs then use the set
    like one trained here."""
    dictionaries.check_model(lm.name, lm.n_layers, lm.d_model)
    name = dictionaries.name
    members = {"clt": dictionaries.clt} if dictionaries.clt is not None else dictionaries.coders
    empty = {column: None for column in TABLES["dictionaries"].columns}
    written, rows = set(), []
    for member, coder in members.items():
        layers = dictionaries.layers if member == "clt" else [member]
        folder = Path("dictionaries") / name / ("clt" if member == "clt" else f"layer_{member}")
        partition_rows = [
            empty
            | {
                "name": name,
                "layer": layer,
                "kind": dictionaries.kind,
                "activation": coder.cfg.activation,
                "input_hook": f"{dictionaries.input_kind}.{layer}",
                "target_hook": f"{dictionaries.output_kind}.{layer}",
                "model": lm.name,
                "n_latents": coder.cfg.n_latents,
                "k": coder.cfg.k,
                "fvu_curve": [],
                "path": str(folder),
                "created_at": datetime.now(UTC),
            }
            for layer in layers
        ]
        meta = {
            "model": lm.name,
            "imported_from": dictionaries.source(layers[0]),
            "imported_format": dictionaries.format,
        }
        if member == "clt":
            meta["layers"] = layers
        else:
            meta |= {k: partition_rows[0][k] for k in ("name", "layer", "kind", "input_hook", "target_hook")}
        save_dictionary(coder, store.root / folder, meta)
        partition = f"{name}-clt" if member == "clt" else layer_partition(name, member)
        write_partition(store, "dictionaries", partition, pl.DataFrame(partition_rows))
        written.add(partition)
        rows += partition_rows
    for old in (store.tables_dir / "dictionaries").glob(f"{name}-*.parquet"):
        suffix = old.stem.removeprefix(f"{name}-")
        if old.stem not in written and (suffix == "clt" or suffix.startswith("layer-")):
            old.unlink()
    return rows

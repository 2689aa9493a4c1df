"""Schemas of every table in the store: column, type and what it means.

The Parquet writer checks frames against these before writing, and `circuitdb tables` prints
them, so this file is the documentation of the store.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl


@dataclass(frozen=True)
class TableSchema:
    description: str
    """What one row is."""
    columns: dict[str, tuple[pl.DataType, str]]
    """Column name → (polars dtype, meaning)."""


TABLES: dict[str, TableSchema] = {
    "corpora": TableSchema(
        "one row per tokenized corpus",
        {
            "corpus": (pl.String(), "corpus name (config corpus.name)"),
            "source": (pl.String(), "where the text came from"),
            "model": (pl.String(), "model whose tokenizer made the blocks"),
            "context": (pl.Int32(), "tokens per block, BOS included"),
            "n_documents": (pl.Int64(), "documents read"),
            "n_blocks": (pl.Int64(), "blocks in total"),
            "n_train_blocks": (pl.Int64(), "blocks in the train split"),
            "n_eval_blocks": (pl.Int64(), "blocks held out for evaluation"),
            "n_tokens": (pl.Int64(), "n_blocks × context"),
            "tokens_sha256": (pl.String(), "fingerprint of the token ids"),
            "seed": (pl.Int64(), "seed of the train/eval split"),
            "created_at": (pl.Datetime("us", "UTC"), "when the corpus was built"),
        },
    ),
    "corpus_blocks": TableSchema(
        "one row per token block",
        {
            "corpus": (pl.String(), "corpus name"),
            "block": (pl.Int64(), "block index in corpus order"),
            "split": (pl.String(), "'train' or 'eval'"),
            "token_ids": (pl.List(pl.Int32()), "token ids, BOS first"),
        },
    ),
    "activation_shards": TableSchema(
        "the activation manifest: one row per stored shard of one hook point",
        {
            "run": (pl.String(), "activation run: <corpus>-<split>"),
            "corpus": (pl.String(), "corpus name"),
            "split": (pl.String(), "'train' or 'eval'"),
            "model": (pl.String(), "model that produced the activations"),
            "hook": (pl.String(), "hook point, e.g. mlp_in.3"),
            "layer": (pl.Int32(), "layer of the hook point"),
            "shard": (pl.Int32(), "shard index within the run and hook"),
            "first_block": (pl.Int64(), "index of the shard's first block within the split"),
            "n_sequences": (pl.Int64(), "blocks in the shard"),
            "n_tokens": (pl.Int64(), "tokens in the shard"),
            "d": (pl.Int32(), "activation width"),
            "dtype": (pl.String(), "storage dtype"),
            "path": (pl.String(), "shard file, relative to the store"),
            "sha256": (pl.String(), "checksum of the shard file"),
        },
    ),
}

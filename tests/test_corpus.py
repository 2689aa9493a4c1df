"""Corpus sources, block layout and the deterministic split."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
import torch

from circuitdb.config import CorpusConfig
from circuitdb.corpus import iter_documents, load_stored_corpus, store_corpus, tokenize_corpus
from circuitdb.errors import CircuitDBError
from circuitdb.models import LoadedModel
from circuitdb.store import Store


def test_blocks_are_bos_plus_the_token_stream(llama: LoadedModel, text_file: Path) -> None:
    cfg = CorpusConfig(source=str(text_file), context=16, max_tokens=16 * 8)
    corpus = tokenize_corpus(llama, cfg)
    assert corpus.blocks.shape == (8, 16) and corpus.blocks.dtype == torch.int32
    assert (corpus.blocks[:, 0] == llama.bos_token_id).all()
    expected = llama.encode(text_file.read_text(), add_bos=False)[: 8 * 15]
    assert corpus.blocks[:, 1:].reshape(-1).tolist() == expected


def test_split_is_deterministic_and_sized(llama: LoadedModel, text_file: Path) -> None:
    cfg = CorpusConfig(source=str(text_file), context=8, max_tokens=8 * 40, eval_fraction=0.25, seed=3)
    first, again = tokenize_corpus(llama, cfg), tokenize_corpus(llama, cfg)
    other = tokenize_corpus(llama, CorpusConfig(**{**cfg.__dict__, "seed": 4}))
    assert int(first.is_eval.sum()) == 10
    assert torch.equal(first.is_eval, again.is_eval) and not torch.equal(first.is_eval, other.is_eval)
    assert first.split("train").shape[0] + first.split("eval").shape[0] == 40


def test_file_kinds_and_folders(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("alpha text")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "beta"}) + "\n\n" + json.dumps({"text": "gamma"}) + "\n")
    pl.DataFrame({"text": ["delta", "epsilon"]}).write_parquet(tmp_path / "c.parquet")
    assert list(iter_documents(CorpusConfig(source=str(tmp_path)))) == [
        "alpha text",
        "beta",
        "gamma",
        "delta",
        "epsilon",
    ]


def test_embedded_corpus_is_python_docs() -> None:
    docs = iter_documents(CorpusConfig())
    first = [next(docs) for _ in range(3)]
    assert all(len(d) > 100 for d in first)


@pytest.mark.parametrize(
    ("content", "message"),
    [("", "empty corpus"), ("{not json", "not valid JSON"), ('{"body": "x"}', "no 'text' field")],
)
def test_bad_sources(llama: LoadedModel, tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / ("c.txt" if not content.startswith("{") else "c.jsonl")
    path.write_text(content)
    with pytest.raises(CircuitDBError, match=message):
        tokenize_corpus(llama, CorpusConfig(source=str(path), context=8, max_tokens=64))


def test_missing_source(llama: LoadedModel) -> None:
    with pytest.raises(CircuitDBError, match="corpus source not found"):
        tokenize_corpus(llama, CorpusConfig(source="/no/such/file.txt"))


def test_store_round_trip(llama: LoadedModel, text_file: Path, tmp_path: Path) -> None:
    corpus = tokenize_corpus(llama, CorpusConfig(source=str(text_file), context=8, max_tokens=80, eval_fraction=0.2))
    store = Store(tmp_path / "store")
    store_corpus(store, corpus, llama.name, seed=0)
    back = load_stored_corpus(store, "default")
    assert torch.equal(back.blocks, corpus.blocks) and torch.equal(back.is_eval, corpus.is_eval)
    with pytest.raises(CircuitDBError, match="not in the store"):
        load_stored_corpus(store, "other")


def test_no_special_token_after_position_0(llama: LoadedModel, tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("first document " * 20)
    (tmp_path / "b.txt").write_text("second document " * 20)
    corpus = tokenize_corpus(llama, CorpusConfig(source=str(tmp_path), context=16, max_tokens=16 * 6))
    special = set(llama.tokenizer.all_special_ids)
    assert not special & set(corpus.blocks[:, 1:].flatten().tolist())

"""Harvested shards hold exactly what a direct capture gives, with honest checksums, and resume."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import polars as pl
import pytest
import torch
from safetensors.torch import load_file

import circuitdb.harvest as harvest_module
from circuitdb.config import CorpusConfig, HarvestConfig
from circuitdb.corpus import tokenize_corpus
from circuitdb.harvest import harvest, harvest_layers, shard_sequences
from circuitdb.models import LoadedModel, capture, resolve_hooks
from circuitdb.store import Store, read_table


def _blocks(lm: LoadedModel, text_file: Path, n: int = 10) -> torch.Tensor:
    return tokenize_corpus(lm, CorpusConfig(source=str(text_file), context=12, max_tokens=12 * n)).blocks


def test_shards_equal_direct_capture(tiny: LoadedModel, text_file: Path, tmp_path: Path) -> None:
    blocks = _blocks(tiny, text_file)
    hooks = resolve_hooks(tiny, ["mlp_in.0", "mlp_out.2", "resid_post.1"])
    cfg = HarvestConfig(batch_size=3, shard_mb=1, dtype="float32")
    manifests = harvest(tiny, blocks, hooks, tmp_path / "run", cfg, progress=False)
    expected = capture(tiny, blocks.long(), hooks)
    for hook in hooks:
        manifest = manifests[hook.name]
        assert manifest["complete"]
        on_disk = json.loads((tmp_path / "run" / hook.name / "manifest.json").read_text())
        assert on_disk["shards"] == manifest["shards"]
        parts, ids = [], []
        for shard in manifest["shards"]:
            path = tmp_path / "run" / hook.name / shard["file"]
            assert hashlib.sha256(path.read_bytes()).hexdigest() == shard["sha256"]
            tensors = load_file(path)
            parts.append(tensors["activations"])
            ids.append(tensors["token_ids"])
        assert torch.allclose(torch.cat(parts), expected[hook.name], atol=1e-5)
        assert torch.equal(torch.cat(ids), blocks)


def test_fp16_storage_is_close(llama: LoadedModel, text_file: Path, tmp_path: Path) -> None:
    blocks = _blocks(llama, text_file, n=4)
    hooks = resolve_hooks(llama, ["resid_post.2"])
    manifest = harvest(llama, blocks, hooks, tmp_path / "run", HarvestConfig(), progress=False)["resid_post.2"]
    stored = load_file(tmp_path / "run" / "resid_post.2" / manifest["shards"][0]["file"])["activations"]
    assert stored.dtype == torch.float16
    assert torch.allclose(stored.float(), capture(llama, blocks.long(), hooks)["resid_post.2"], rtol=1e-3, atol=1e-3)


def test_shard_budget_bounds_memory() -> None:
    cfg = HarvestConfig(batch_size=4, shard_mb=256, dtype="float16")
    per_shard = shard_sequences(cfg, n_hooks=60, context=256, d_model=576)
    assert per_shard == 12  # 14 blocks fit in 256 MiB, rounded down to whole batches
    assert per_shard * 60 * 256 * 576 * 2 <= 256 * 2**20
    tiny_budget = HarvestConfig(batch_size=4, shard_mb=1, dtype="float16")
    assert shard_sequences(tiny_budget, n_hooks=60, context=256, d_model=576) == 4  # never below one batch


def test_resume_skips_finished_shards(llama: LoadedModel, text_file: Path, tmp_path: Path, monkeypatch) -> None:
    blocks = _blocks(llama, text_file)
    hooks = resolve_hooks(llama, ["mlp_in.1"])
    cfg = HarvestConfig(batch_size=2, dtype="float32")
    real_write = harvest_module._write_shard
    written: list[int] = []

    def crash_after_first(hook_dir, manifest, index, *args):
        if written:
            raise KeyboardInterrupt("killed")
        written.append(index)
        real_write(hook_dir, manifest, index, *args)

    monkeypatch.setattr(harvest_module, "shard_sequences", lambda *a: 2)  # 5 shards: the crash hits mid-run
    monkeypatch.setattr(harvest_module, "_write_shard", crash_after_first)
    with pytest.raises(KeyboardInterrupt):
        harvest(llama, blocks, hooks, tmp_path / "run", cfg, progress=False)
    first = tmp_path / "run" / "mlp_in.1" / "shard-00000.safetensors"
    stamp = first.stat().st_mtime_ns
    monkeypatch.setattr(harvest_module, "_write_shard", real_write)
    manifest = harvest(llama, blocks, hooks, tmp_path / "run", cfg, progress=False)["mlp_in.1"]
    assert first.stat().st_mtime_ns == stamp
    assert manifest["complete"] and [s["index"] for s in manifest["shards"]] == list(range(5))
    whole = torch.cat([load_file(tmp_path / "run" / "mlp_in.1" / s["file"])["activations"] for s in manifest["shards"]])
    assert torch.allclose(whole, capture(llama, blocks.long(), hooks)["mlp_in.1"], atol=1e-5)


def test_harvest_layers_writes_manifest_table(llama: LoadedModel, text_file: Path, tmp_path: Path) -> None:
    corpus = tokenize_corpus(llama, CorpusConfig(source=str(text_file), context=12, max_tokens=120, eval_fraction=0.2))
    store = Store(tmp_path / "store")
    harvest_layers(store, llama, corpus, [0, 2], HarvestConfig(batch_size=4), progress=False)
    table = read_table(store, "activation_shards")
    assert sorted(set(table["hook"])) == ["mlp_in.0", "mlp_in.2", "mlp_out.0", "mlp_out.2"]
    tokens = table.group_by("hook", "split").agg(n=pl.col("n_tokens").sum())
    assert set(tokens.filter(tokens["split"] == "eval")["n"]) == {2 * 12}
    assert set(tokens.filter(tokens["split"] == "train")["n"]) == {8 * 12}
    assert all((store.root / p).is_file() for p in table["path"])

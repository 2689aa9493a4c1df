"""Feature statistics against a brute-force computation over every token."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
import torch

from circuitdb.config import CorpusConfig, HarvestConfig
from circuitdb.corpus import tokenize_corpus
from circuitdb.dictionaries import ActivationSource, DictionaryConfig, SparseCoder
from circuitdb.features import FeatureStatsConfig, feature_statistics
from circuitdb.harvest import harvest
from circuitdb.models import LoadedModel, resolve_hooks


@pytest.fixture
def stats(llama: LoadedModel, text_file: Path, tmp_path: Path):
    blocks = tokenize_corpus(llama, CorpusConfig(source=str(text_file), context=24, max_tokens=24 * 20)).blocks
    hooks = resolve_hooks(llama, ["mlp_in.1", "mlp_out.1"])
    harvest(
        llama, blocks, hooks, tmp_path / "run", HarvestConfig(batch_size=4, shard_mb=1, dtype="float32"), progress=False
    )
    source = ActivationSource(tmp_path / "run", ["mlp_in.1"], ["mlp_out.1"])
    torch.manual_seed(0)
    coder = SparseCoder(DictionaryConfig(kind="plt", n_latents=40, k=3), 64, 64).eval()
    with torch.no_grad():
        coder.b_enc[-1] = -1e4  # a latent that can never fire
    cfg = FeatureStatsConfig(n_top=4, n_groups=3, per_group=2, bins=8, chunk_sequences=3, n_logits=5, n_neighbours=3)
    features, exemplars = feature_statistics(coder, source, blocks, llama, "plt", 1, cfg)
    inputs, _ = source.sequences()
    with torch.no_grad():
        dense = coder.encode(inputs[:, 1:, 0].flatten(0, 1)).view(blocks.shape[0], 23, -1)
    return features, exemplars, dense, coder, blocks


def test_density_max_mean_and_dead(stats) -> None:
    features, _, dense, _, _ = stats
    flat = dense.flatten(0, 1)
    active = (flat > 0).sum(0)
    assert features["density"].to_list() == pytest.approx((active / flat.shape[0]).tolist())
    assert features["max_act"].to_list() == pytest.approx(flat.max(0).values.clamp_min(0).tolist(), rel=1e-5)
    mean = flat.sum(0) / active.clamp_min(1)
    assert features["mean_act"].to_list() == pytest.approx(mean.tolist(), rel=1e-4)
    assert features["dead"].to_list() == (active == 0).tolist() and features["dead"][-1]
    assert features["label"][-1] == "dead"
    histograms = torch.tensor(features["histogram"].to_list())
    assert torch.equal(histograms.sum(1), active)


def test_top_and_quantile_exemplars(stats, llama: LoadedModel) -> None:
    features, exemplars, dense, _, blocks = stats
    top = exemplars.filter(pl.col("kind") == "top")
    for latent in (0, 7, 19):
        rows = top.filter(pl.col("feature_id") == f"plt/1/{latent}").sort("rank")
        expected = dense[:, :, latent].flatten().topk(4).values
        expected = expected[expected > 0]
        assert rows["activation"].to_list() == pytest.approx(expected.tolist(), rel=1e-5)
        for row in rows.iter_rows(named=True):
            assert dense[row["block"], row["position"] - 1, latent] == pytest.approx(row["activation"], rel=1e-5)
            start = row["position"] - row["peak_offset"]
            window = dense[row["block"], start - 1 : start - 1 + len(row["values"]), latent]
            assert row["values"] == pytest.approx(window.tolist(), rel=1e-5, abs=1e-6)
            assert row["values"][row["peak_offset"]] == pytest.approx(row["activation"], rel=1e-5)
            token = llama.tokenizer.decode([int(blocks[row["block"], row["position"]])])
            assert row["tokens"][row["peak_offset"]] == token
    quantile = exemplars.filter(pl.col("kind") == "quantile").join(
        features.select("feature_id", "max_act"), on="feature_id"
    )
    assert quantile.height > 0
    for row in quantile.iter_rows(named=True):
        low, high = (row["group"] - 1) / 3 * row["max_act"], row["group"] / 3 * row["max_act"]
        assert low - 1e-5 <= row["activation"] <= high + 1e-5


def test_logits_and_neighbours(stats, llama: LoadedModel) -> None:
    features, _, _, coder, _ = stats
    logits = (coder.W_dec * llama.model.model.norm.weight) @ llama.model.lm_head.weight.T
    best = logits[5].topk(5).indices.tolist()
    assert features["top_logits"][5].to_list() == [llama.tokenizer.decode([i]) for i in best]
    unit = torch.nn.functional.normalize(coder.W_dec, dim=1)
    cosine = unit @ unit.T
    cosine.fill_diagonal_(-2)
    assert features["neighbours"][5].to_list() == [f"plt/1/{j}" for j in cosine[5].topk(3).indices.tolist()]

"""Nearest decoder directions against brute-force cosine, with filters and partition replacement."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from circuitdb.errors import CircuitDBError
from circuitdb.store import Store
from circuitdb.store.vectors import feature_vector, nearest, write_vectors


def _features(layer: int, n: int) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "feature_id": [f"d/{layer}/{i}" for i in range(n)],
            "dictionary": "d",
            "layer": layer,
            "index": range(n),
            "label": "x",
            "density": np.linspace(0, 1, n),
        }
    )


@pytest.fixture
def store(tmp_path: Path) -> tuple[Store, dict[int, torch.Tensor]]:
    store = Store(tmp_path / "store")
    generator = torch.Generator().manual_seed(0)
    decoders = {layer: torch.randn(200, 12, generator=generator) for layer in range(3)}
    for layer, decoder in decoders.items():
        write_vectors(store, "d", layer, decoder, _features(layer, 200))
    return store, decoders


def test_matches_brute_force_with_filters(store) -> None:
    store, decoders = store
    query = decoders[1][7].numpy()
    ids = [f"d/{layer}/{i}" for layer in range(3) for i in range(200)]
    unit = torch.nn.functional.normalize(torch.cat(list(decoders.values())), dim=1).numpy()
    cosine = unit @ (query / np.linalg.norm(query))
    density = np.tile(np.linspace(0, 1, 200), 3)
    layer = np.repeat(np.arange(3), 200)
    allowed = (layer >= 1) & (density >= 0.2) & (density <= 0.9) & (np.array(ids) != "d/1/7")
    expected = [ids[i] for i in np.argsort(-np.where(allowed, cosine, -np.inf))[:5]]
    found = nearest(store, query, k=5, layers=(1, 2), density=(0.2, 0.9), exclude="d/1/7")
    assert found["feature_id"].to_list() == expected
    assert found["cosine"].to_list() == pytest.approx(sorted(cosine[allowed], reverse=True)[:5], abs=1e-5)


def test_rewriting_a_partition_replaces_it(store) -> None:
    store, decoders = store
    write_vectors(store, "d", 1, -decoders[1], _features(1, 200))
    assert nearest(store, decoders[1][3].numpy(), k=1000)["feature_id"].n_unique() == 600
    assert np.allclose(feature_vector(store, "d/1/3"), -torch.nn.functional.normalize(decoders[1][3], dim=0).numpy())


def test_bad_queries(store, tmp_path: Path) -> None:
    store, _ = store
    with pytest.raises(CircuitDBError, match="dimension 5"):
        nearest(store, np.ones(5))
    with pytest.raises(CircuitDBError, match="unknown feature"):
        feature_vector(store, "d/9/9")
    with pytest.raises(CircuitDBError, match="no feature vectors"):
        nearest(Store(tmp_path / "empty"), np.ones(12))

"""Automatic supernodes: grouping recovers planted groups (adjusted Rand index), each signal and the linkage
against hand-computed cases."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from circuitdb.circuits.supernodes import (
    GroupingSettings,
    adjusted_rand_index,
    average_linkage,
    coactivation_similarity,
    decoder_similarity,
    group_features,
    label_similarity,
    output_similarity,
)


def test_adjusted_rand_index_by_hand() -> None:
    """Truth {0,1,2},{3,4}; found {0,1},{2,3,4}: contingency [[2,1],[0,2]], pairs 1+1 = 2, rows 3+1 = 4, columns
    1+3 = 4, all 10: expected 1.6, ARI (2 - 1.6) / (4 - 1.6) = 1/6."""
    assert adjusted_rand_index([0, 0, 0, 1, 1], ["a", "a", "b", "b", "b"]) == pytest.approx(1 / 6)
    assert adjusted_rand_index([0, 0, 1, 1], [5, 5, 7, 7]) == 1.0


def test_signals_by_hand() -> None:
    assert decoder_similarity(np.array([[1.0, 0], [0.6, 0.8], [-1.0, 0]])) == pytest.approx(
        np.array([[1, 0.6, 0], [0.6, 1, 0], [0, 0, 1]])
    )
    assert output_similarity(np.array([[1.0, 1.0], [2.0, 2.0], [0.0, 0.0]])) == pytest.approx(
        np.array([[1, 1, 0], [1, 1, 0], [0, 0, 0]])
    )
    assert label_similarity(["Paris France", "paris, capital", ""])[0, 1] == pytest.approx(1 / 3)
    assert coactivation_similarity(np.array([[1.0, 0, 1], [2.0, 0, 2], [0, 1.0, 0]]))[0] == pytest.approx([1, 1, 0])


def test_average_linkage_by_hand() -> None:
    """a-b 0.9, then {a,b}-c averages (0.6 + 0.4) / 2 = 0.5: merged at 0.5, not at 0.55; d is forbidden with a."""
    similarity = np.array([[1, 0.9, 0.6, 0.9], [0.9, 1, 0.4, 0.9], [0.6, 0.4, 1, 0.0], [0.9, 0.9, 0.0, 1]])
    allowed = np.ones((4, 4), dtype=bool)
    allowed[0, 3] = allowed[3, 0] = False
    labels = average_linkage(similarity, allowed, 0.5)
    assert labels[0] == labels[1] == labels[2] != labels[3]
    labels = average_linkage(similarity, allowed, 0.55)
    assert labels[0] == labels[1] and len({labels[0], labels[2], labels[3]}) == 3


def _planted(seed: int, groups: int = 8, size: int = 5, loners: int = 20, d: int = 64, targets: int = 40):
    """Features of planted groups (a shared decoder direction and outputs plus noise, a shared word in their
    labels) spread over 4 positions and adjacent layers, and loners with their own direction and outputs."""
    rng = np.random.default_rng(seed)
    rows, truth, vectors, outgoing, labels = [], [], [], [], []
    words = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "theta", "zeta", "iota"]
    for g in range(groups + loners):
        planted = g < groups
        direction, feeds = rng.normal(size=d), rng.normal(size=targets) * (rng.random(targets) < 0.3)
        position, layer = int(rng.integers(4)), int(rng.integers(2, 26))
        for m in range(size if planted else 1):
            rows.append((f"{layer + m % 3}_{g}{m}_{position}", layer + m % 3, position))
            truth.append(g)
            vectors.append(direction + 0.5 * rng.normal(size=d))
            outgoing.append(feeds + 0.2 * rng.normal(size=targets) * (feeds != 0))
            labels.append(f"{words[g % len(words)]} {rng.choice(words)} thing{g}" if planted else f"loner {g}")
    features = pl.DataFrame(rows, schema=["node_id", "layer", "position"], orient="row")
    signals = {
        "decoder": decoder_similarity(np.array(vectors)),
        "output": output_similarity(np.array(outgoing)),
        "label": label_similarity(labels),
        "coactivation": None,
    }
    return features, signals, truth


@pytest.mark.parametrize("seed", range(3))
def test_planted_groups_are_recovered(seed: int) -> None:
    features, signals, truth = _planted(seed)
    groups = group_features(features, signals, GroupingSettings())
    found = {node_id: f"g{k}" for k, group in enumerate(groups) for node_id in group.node_ids}
    labels = [found.get(node_id, node_id) for node_id in features["node_id"]]  # ungrouped: a group of its own
    assert adjusted_rand_index(truth, labels) >= 0.9

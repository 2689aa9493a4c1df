"""Automatic supernodes: the features of a pruned graph grouped by what they do, as a researcher groups them by
hand (Anthropic's and Neuronpedia's workflow).

Two features are similar when their decoder directions agree (they write the same thing), they feed the same
nodes with the same signs (their place in the graph), their labels share words (explanations, or the heuristic
label naming the logits a feature promotes) and, over a prompt set, they are active in the same prompts. The
similarity is a weighted mean of those signals (a signal that is missing, e.g. co-activation for a lone graph,
gives its weight to the others). Features are grouped at one position at a time (a supernode is one token's
mechanism) and only within `max_layer_gap` layers of each other, by average-linkage agglomeration until no two
groups are more similar than `threshold` on average.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import polars as pl

from circuitdb.circuits.diff import label_words


class GroupingSettings(NamedTuple):
    """How features are grouped (stored with the groups, so a grouping can be reproduced)."""

    threshold: float = 0.35
    """Groups merge while their average similarity is at least this (on the planted family, 0.35 recovers
    noisy groups without merging their decoys; 0.5 leaves noisy groups in pieces)."""
    max_layer_gap: int = 3
    """Features farther apart in layers are never grouped."""
    decoder_weight: float = 0.35
    """Weight of decoder-direction cosine (clipped at 0)."""
    output_weight: float = 0.3
    """Weight of the cosine between the features' signed outgoing edge weights (the nodes they feed)."""
    label_weight: float = 0.15
    """Weight of their labels' word overlap (Jaccard)."""
    coactivation_weight: float = 0.2
    """Weight of their activation correlation across a prompt set's graphs (absent for one graph)."""
    min_size: int = 2
    """Smallest group kept."""


DEFAULT_GROUPING = GroupingSettings()


def decoder_similarity(vectors: np.ndarray) -> np.ndarray:
    """Cosine of unit-normalized decoder rows [n, d], clipped at 0: opposite writers are not alike."""
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return np.clip(unit @ unit.T, 0.0, 1.0)


def output_similarity(outgoing: np.ndarray) -> np.ndarray:
    """Cosine of rows [n, targets] of signed edge weights, clipped at 0; 0 for a feature feeding nothing."""
    norms = np.linalg.norm(outgoing, axis=1, keepdims=True)
    unit = np.divide(outgoing, norms, out=np.zeros_like(outgoing), where=norms > 0)
    return np.clip(unit @ unit.T, 0.0, 1.0)


def label_similarity(labels: list[str]) -> np.ndarray:
    words = [label_words(label or "") for label in labels]
    n = len(words)
    similarity = np.zeros((n, n))
    for i in range(n):
        for j in range(i, n):
            union = words[i] | words[j]
            similarity[i, j] = similarity[j, i] = len(words[i] & words[j]) / len(union) if union else 0.0
    return similarity


def coactivation_similarity(activations: np.ndarray) -> np.ndarray:
    """Pearson correlation of rows [n, graphs] (a feature's activation in each graph, 0 where absent), clipped
    at 0; 0 for a feature active in every graph alike."""
    centred = activations - activations.mean(1, keepdims=True)
    norms = np.linalg.norm(centred, axis=1)
    outer = norms[:, None] * norms[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        correlation = np.where(outer > 0, centred @ centred.T / outer, 0.0)
    return np.clip(correlation, 0.0, 1.0)


def combined_similarity(signals: dict[str, np.ndarray | None], settings: GroupingSettings) -> np.ndarray:
    """The weighted mean of the signals given (None: missing, its weight left out)."""
    weights = {
        "decoder": settings.decoder_weight,
        "output": settings.output_weight,
        "label": settings.label_weight,
        "coactivation": settings.coactivation_weight,
    }
    present = {name: matrix for name, matrix in signals.items() if matrix is not None}
    total = sum(weights[name] for name in present)
    return sum(weights[name] * matrix for name, matrix in present.items()) / total


def average_linkage(similarity: np.ndarray, allowed: np.ndarray, threshold: float) -> np.ndarray:
    """Cluster labels [n] by average-linkage agglomeration: merge the two most similar groups while their
    average similarity is ≥ threshold; groups holding a pair that is not `allowed` never merge."""
    n = len(similarity)
    labels = np.arange(n)
    sizes = np.ones(n)
    linkage = np.where(allowed, similarity, -np.inf).astype(np.float64)
    forbidden = ~allowed
    np.fill_diagonal(linkage, -np.inf)
    alive = np.ones(n, dtype=bool)
    while alive.sum() > 1:
        flat = int(np.argmax(linkage))
        i, j = divmod(flat, n)
        if linkage[i, j] < threshold:
            break
        # Lance-Williams for average linkage; a forbidden pair anywhere forbids the merged group with that one
        merged = (sizes[i] * linkage[i] + sizes[j] * linkage[j]) / (sizes[i] + sizes[j])
        forbidden[i] |= forbidden[j]
        forbidden[:, i] = forbidden[i]
        merged[forbidden[i] | ~alive] = -np.inf
        linkage[i], linkage[:, i] = merged, merged
        linkage[i, i] = -np.inf
        linkage[j], linkage[:, j] = -np.inf, -np.inf
        sizes[i] += sizes[j]
        alive[j] = False
        labels[labels == j] = i
    return labels


class Group(NamedTuple):
    node_ids: list[str]
    position: int
    layers: tuple[int, int]
    """Lowest and highest layer of its members."""
    similarity: float
    """Mean similarity of its member pairs."""


def group_features(
    features: pl.DataFrame, signals: dict[str, np.ndarray | None], settings: GroupingSettings = DEFAULT_GROUPING
) -> list[Group]:
    """Groups of `features` (rows: node_id, layer, position, in the order of the signals' rows and columns), one
    position at a time, largest first."""
    similarity = combined_similarity(signals, settings)
    layers = features["layer"].to_numpy()
    positions = features["position"].to_numpy()
    ids = features["node_id"].to_list()
    groups = []
    for position in np.unique(positions):
        members = np.flatnonzero(positions == position)
        near = np.abs(layers[members, None] - layers[None, members]) <= settings.max_layer_gap
        local = similarity[np.ix_(members, members)]
        labels = average_linkage(local, near, settings.threshold)
        for label in np.unique(labels):
            chosen = members[labels == label]
            if len(chosen) < settings.min_size:
                continue
            inner = similarity[np.ix_(chosen, chosen)]
            pairs = inner[np.triu_indices(len(chosen), 1)]
            groups.append(
                Group(
                    [ids[k] for k in chosen],
                    int(position),
                    (int(layers[chosen].min()), int(layers[chosen].max())),
                    float(pairs.mean()),
                )
            )
    return sorted(groups, key=lambda group: (-len(group.node_ids), group.position))


def adjusted_rand_index(truth: list, found: list) -> float:
    """Agreement of two clusterings of the same items, 1 when identical and ~0 for chance (Hubert & Arabie)."""
    _, true_codes = np.unique(np.asarray(truth, dtype=object).astype(str), return_inverse=True)
    _, found_codes = np.unique(np.asarray(found, dtype=object).astype(str), return_inverse=True)
    table = np.zeros((true_codes.max() + 1, found_codes.max() + 1))
    np.add.at(table, (true_codes, found_codes), 1)
    pairs = lambda counts: (counts * (counts - 1) / 2).sum()  # noqa: E731
    both, rows, columns = pairs(table), pairs(table.sum(1)), pairs(table.sum(0))
    expected = rows * columns / pairs(np.array([len(truth)]))
    best = (rows + columns) / 2
    return 1.0 if best == expected else float((both - expected) / (best - expected))


def planted_family(
    seed: int, groups: int = 8, size: int = 5, loners: int = 20, d: int = 64, targets: int = 40, prompts: int = 12
) -> tuple[pl.DataFrame, dict[str, np.ndarray | None], list[int]]:
    """A synthetic graph whose grouping is known, what grouping is measured against (tests, benchmark). Planted
    groups over 4 positions and adjacent layers share a decoder direction, outputs and prompts they fire on, each
    member with as much noise as signal in its direction (member cosine ~0.5), feeding 85% of the group's
    targets with noise and firing on 85% of its prompts; a member's label holds the
    group's word only half the time, and words are drawn from one small vocabulary for every feature. Each group
    has a decoy beside it (its position and layers, a direction half the group's, outputs and prompts of its
    own), and loners have everything of their own. Returns the feature rows, the similarity signals and each
    feature's true group."""
    rng = np.random.default_rng(seed)
    rows, truth, vectors, outgoing, labels, fired = [], [], [], [], [], []
    words = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "theta", "zeta", "iota"]

    def add(group: int, layer: int, position: int, direction, feeds, firing, label: str) -> None:
        rows.append((f"{layer}_{len(rows)}_{position}", layer, position))
        truth.append(group)
        vectors.append(direction + rng.normal(size=d))
        outgoing.append((feeds + 0.6 * rng.normal(size=targets)) * (feeds != 0) * (rng.random(targets) < 0.85))
        fired.append(firing * rng.uniform(0.5, 1.5, size=prompts) * (rng.random(prompts) < 0.85))
        labels.append(label)

    def own(count: int):
        return rng.normal(size=count), rng.normal(size=targets) * (rng.random(targets) < 0.3)

    for g in range(groups):
        (direction, _), (_, feeds) = own(d), own(targets)
        position, layer = int(rng.integers(4)), int(rng.integers(2, 26))
        firing = (rng.random(prompts) < 0.5).astype(float)
        for m in range(size):
            word = words[g % len(words)] if rng.random() < 0.5 else rng.choice(words)
            add(g, layer + m % 3, position, direction, feeds, firing, f"{word} {rng.choice(words)}")
        decoy, decoy_feeds = own(d)
        add(groups + g, layer + 1, position, 0.5 * direction + decoy, decoy_feeds,
            (rng.random(prompts) < 0.5).astype(float), f"{words[g % len(words)]} {rng.choice(words)}")  # fmt: skip
    for g in range(loners):
        direction, feeds = own(d)
        add(2 * groups + g, int(rng.integers(2, 26)), int(rng.integers(4)), direction, feeds,
            (rng.random(prompts) < 0.5).astype(float), f"{rng.choice(words)} {rng.choice(words)}")  # fmt: skip
    features = pl.DataFrame(rows, schema=["node_id", "layer", "position"], orient="row")
    signals = {
        "decoder": decoder_similarity(np.array(vectors)),
        "output": output_similarity(np.array(outgoing)),
        "label": label_similarity(labels),
        "coactivation": coactivation_similarity(np.array(fired)),
    }
    return features, signals, truth

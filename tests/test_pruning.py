"""Pruning gives circuit-tracer's node and edge sets: a graph worked out by hand, and random graphs
against a plain transcription of circuit-tracer's `prune_graph` (dense sorts, no bucketing)."""

from __future__ import annotations

import pytest
import torch

from circuitdb.attribution import prune
from circuitdb.attribution.graph import Graph
from circuitdb.attribution.replacement_model import Features


def _graph(adjacency, n_features: int, n_layers: int, n_positions: int, probabilities: list[float], layers=None):
    zeros = torch.zeros(n_features, dtype=torch.long)
    layers = zeros if layers is None else layers
    features = Features(layers, zeros, torch.arange(n_features), torch.ones(n_features))
    logits = list(range(len(probabilities)))
    probabilities = torch.tensor(probabilities)
    return Graph(list(range(n_positions)), features, n_layers, logits, probabilities, adjacency, n_features)


def test_hand_computed_graph() -> None:
    """f1, f2 (features), e (error), t (token), L (logit, p = 1); L reads f1 .3, f2 .2, e .1, t .4; f1, f2 read t.

    Influence on L: f1 .3, f2 .2, e .1, t .4 + .3 + .2 = .9 (total 1.5). Ranked t, f1, f2, e: cumulative
    .6, .8, .93, 1 → at 0.75 the threshold is f1's .3: f2 and e go. (Ranking features and errors alone,
    .5, .83, 1, would keep f2 too: tokens compete for the threshold.) On the pruned graph, L reads
    f1 3/7, t 4/7 and f1 reads t: edge scores 3/7, 4/7 and 3/7 · 1 — all three are kept (the tie too).
    """
    f1, f2, e, t, L = range(5)
    adjacency = torch.zeros(5, 5)
    adjacency[L, f1], adjacency[L, f2], adjacency[L, e], adjacency[L, t] = 0.3, -0.2, 0.1, 0.4  # signs don't matter
    adjacency[f1, t] = adjacency[f2, t] = 1.0
    pruned = prune(_graph(adjacency, 2, 1, 1, [1.0]), node_threshold=0.75, edge_threshold=0.98)
    assert pruned.node_mask.tolist() == [True, False, False, True, True]
    assert torch.allclose(pruned.node_influence, torch.tensor([0.3, 0.2, 0.1, 0.9, 0.0]))
    expected_edges = torch.zeros(5, 5, dtype=torch.bool)
    expected_edges[L, f1] = expected_edges[L, t] = expected_edges[f1, t] = True
    assert torch.equal(pruned.edge_mask, expected_edges)
    assert pruned.replacement_score == pytest.approx(0.9 / 1.0)  # tokens .9 vs errors .1
    # completeness: each node's non-error input share (L: .9, the others 1) weighted by its influence + own
    # logit weight (.3, .2, .1, .9, 1): (1.5 + .9) / 2.5
    assert pruned.completeness_score == pytest.approx(2.4 / 2.5)


def _reference_prune(adjacency: torch.Tensor, n_features: int, n_tokens: int, probabilities: torch.Tensor, nt, et):
    """circuit-tracer's prune_graph, written out plainly (float64, full sorts)."""
    n_logits = len(probabilities)
    weights = torch.zeros(len(adjacency), dtype=torch.float64)
    weights[-n_logits:] = probabilities.double()

    def normalize(matrix):
        matrix = matrix.abs()
        return matrix / matrix.sum(1, keepdim=True).clamp(min=1e-10)

    def influence(matrix):
        current = weights @ matrix
        total = current.clone()
        while current.any():
            current = current @ matrix
            total += current
        return total

    def threshold(scores, share):
        ranked = scores.sort(descending=True).values
        cumulative = ranked.cumsum(0) / ranked.sum()
        return ranked[min(int(torch.searchsorted(cumulative, share)), len(ranked) - 1)]

    node_scores = influence(normalize(adjacency))
    inner = len(adjacency) - n_logits - n_tokens
    errors, tokens = slice(n_features, inner), slice(inner, inner + n_tokens)
    replacement = node_scores[tokens].sum() / (node_scores[tokens].sum() + node_scores[errors].sum())
    output_influence = node_scores + weights
    non_error = 1 - normalize(adjacency)[:, errors].sum(1)
    completeness = (non_error * output_influence).sum() / output_influence.sum()
    node_mask = node_scores >= threshold(node_scores, nt)
    node_mask[-n_logits - n_tokens :] = True
    pruned = adjacency.clone()
    pruned[~node_mask] = 0
    pruned[:, ~node_mask] = 0
    normalized = normalize(pruned)
    edge_scores = normalized * (influence(normalized) + weights)[:, None]
    edge_mask = edge_scores >= threshold(edge_scores.flatten(), et)
    while True:
        old = node_mask.clone()
        node_mask[:inner] &= edge_mask[:, :inner].any(0)
        node_mask[:n_features] &= edge_mask[:n_features].any(1)
        edge_mask[~node_mask] = False
        edge_mask[:, ~node_mask] = False
        if torch.equal(old, node_mask):
            return node_mask, edge_mask, float(replacement), float(completeness)


@pytest.mark.parametrize("seed", range(6))
def test_random_graphs_match_circuit_tracer(seed: int) -> None:
    """Layered random graphs (12 layers × 4 positions) with sparse heavy-tailed edges, tokens and logits."""
    gen = torch.Generator().manual_seed(seed)
    n_layers, n_positions, n_features, n_logits = 12, 4, 60, 3
    n = n_features + n_layers * n_positions + n_positions + n_logits
    depth = torch.cat(
        [
            torch.randint(1, n_layers + 1, (n_features,), generator=gen),  # features at layers 1..12
            torch.arange(1, n_layers + 1).repeat_interleave(n_positions),  # errors
            torch.zeros(n_positions, dtype=torch.long),  # tokens first
            torch.full((n_logits,), n_layers + 1),  # logits last
        ]
    )
    allowed = depth[:, None] > depth[None, :]  # [targets, sources]: edges only go deeper
    allowed[n_features : n - n_logits] = False  # errors and tokens read nothing, as in an attribution graph
    weights = torch.randn(n, n, generator=gen, dtype=torch.float64) ** 3
    sparse = torch.rand(n, n, generator=gen) < 0.3
    adjacency = torch.where(allowed & sparse, weights, torch.zeros(()))
    adjacency[-n_logits:, :n_features][:, :5] += 1.0  # a few strong features, so pruning has a shape
    probabilities = torch.tensor([0.6, 0.25, 0.1])
    layers = depth[:n_features] - 1  # a feature of depth d reads errors of depth < d: its layer is d - 1
    graph = _graph(adjacency.float(), n_features, n_layers, n_positions, probabilities.tolist(), layers)
    for nt, et in [(0.8, 0.98), (0.5, 0.9), (0.95, 0.7)]:
        pruned = prune(graph, node_threshold=nt, edge_threshold=et)
        reference = _reference_prune(adjacency.float().double(), n_features, n_positions, probabilities, nt, et)
        nodes, edges, replacement, completeness = reference
        assert torch.equal(pruned.node_mask, nodes), (nt, et)
        assert torch.equal(pruned.edge_mask, edges), (nt, et)
        assert pruned.replacement_score == pytest.approx(replacement, rel=1e-5)
        assert pruned.completeness_score == pytest.approx(completeness, rel=1e-5)
        assert 0.05 < replacement < 0.95 and 0.05 < completeness < 0.95  # the scores are not trivially 0 or 1
        assert 0 < int(nodes[:n_features].sum()) < n_features

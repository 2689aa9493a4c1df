"""Pruning and scores: keep what carries the influence on the logits, and say how much errors carry.

Influence is measured on the row-normalized absolute adjacency Â (each target's incoming weights
sum to 1): the total influence of node s on the logits is wᵀ(Â + Â² + …)[s] = wᵀ((I − Â)⁻¹ − I)[s],
with w the logits' probabilities. The graph is acyclic and layered, so the series is solved in one pass
over Â's rows from the last layer down, never as an inverse.
As circuit-tracer's `prune_graph`, so the same graph gives the same node and edge sets:
- nodes: rank *every* node by influence (tokens included: they compete for the threshold; logits
  have none) and keep those at or above the score where the ranked cumulative sum reaches
  `node_threshold` of the total (ties kept); tokens and logits always stay;
- edges: zero the dropped nodes' rows and columns of |A|, renormalize the rows, recompute influence
  on that graph, score each edge by its normalized weight times its target's influence plus the
  target's logit probability, and keep the edges at or above the `edge_threshold` score;
- clean-up, repeated until nothing changes: features and errors without a kept outgoing edge go, and
  features without a kept incoming edge go, with their edges.
One departure: an edge threshold of zero (`edge_threshold` = 1) keeps the edges with a nonzero score,
where circuit-tracer's `>=` would mark every pair of nodes as an edge.
- replacement score: the share of the logits' influence that starts at tokens rather than errors;
- completeness score: the influence-weighted share of each node's input that does not come from errors.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from circuitdb.attribution.graph import Graph
from circuitdb.attribution.replacement_model import Features


def normalized(adjacency: torch.Tensor) -> torch.Tensor:
    """|A| with each row (target) scaled to sum 1 (a new matrix)."""
    return normalize_rows_(adjacency.abs())


def normalize_rows_(matrix: torch.Tensor) -> torch.Tensor:
    """`matrix` (non-negative) with each row scaled to sum 1 (over every source: features, errors, tokens),
    in place."""
    return matrix.div_(matrix.sum(1, keepdim=True).clamp_min(1e-10))


def influence(matrix: torch.Tensor, weights: torch.Tensor, read_layers: torch.Tensor) -> torch.Tensor:
    """wᵀ(M + M² + …) for a graph's normalized adjacency M, in one pass over its rows.

    Row t holds the edges into t, which reads the residual stream at `read_layers[t]` (−1: errors and tokens,
    whose rows are empty). An edge only enters a node of a later read layer than its source's, so taking the
    rows from the last read layer down, each row's own influence is complete when it is reached: one
    vector–matrix product per layer instead of one pass over M per path length (the series' definition)."""
    total = torch.zeros_like(weights)
    for layer in read_layers.unique().flip(0).tolist():
        if layer < 0:
            break
        rows = (read_layers == layer).nonzero().flatten()
        first, count = int(rows[0]), len(rows)
        block = matrix[first : first + count] if int(rows[-1]) - first == count - 1 else matrix[rows]
        total += (weights[rows] + total[rows]) @ block
    return total


def logit_weights(graph: Graph) -> torch.Tensor:
    weights = torch.zeros(graph.n_nodes, dtype=graph.adjacency.dtype, device=graph.adjacency.device)
    weights[graph.logit_start :] = graph.logit_probabilities.to(weights)
    return weights


def node_influence(graph: Graph) -> torch.Tensor:
    return influence(normalized(graph.adjacency), logit_weights(graph), graph.read_layers)


def _threshold(scores: torch.Tensor, share: float) -> float:
    """The smallest score among those that, largest first, make up `share` of the total (scores ≥ 0)."""
    ranked = scores.flatten().double().sort(descending=True).values
    cumulative = ranked.cumsum(0) / ranked.sum().clamp_min(1e-300)
    return float(ranked[min(int(torch.searchsorted(cumulative, share).item()), len(ranked) - 1)])


def _matrix_threshold(matrix: torch.Tensor, share: float, rows_per_chunk: int = 512) -> float:
    """`_threshold` over every entry of a large non-negative float32 matrix without sorting it.

    The bit patterns of non-negative floats sort like their values, so one chunked pass buckets the
    entries by their top 16 bits (sums per bucket); only the bucket where the cumulative share is
    crossed is then sorted. Same result as sorting all N² entries, without N² indices in memory.
    """
    if matrix.dtype != torch.float32:
        return _threshold(matrix, share)
    totals = torch.zeros(1 << 16, dtype=torch.float64, device=matrix.device)
    for chunk in matrix.split(rows_per_chunk):
        buckets = chunk.contiguous().view(torch.int32).flatten() >> 16
        totals += torch.bincount(buckets, weights=chunk.flatten().double(), minlength=1 << 16)
    above = totals.flip(0).cumsum(0).flip(0)  # above[b]: total of buckets ≥ b
    goal = share * float(above[0])
    crossing = int((above >= goal).nonzero().max())  # highest bucket whose cumulative reaches the goal
    higher = float(above[crossing + 1]) if crossing + 1 < len(above) else 0.0
    members = torch.cat(
        [chunk[(chunk.contiguous().view(torch.int32) >> 16) == crossing] for chunk in matrix.split(rows_per_chunk)]
    )
    ranked = members.double().sort(descending=True).values
    cumulative = higher + ranked.cumsum(0)
    index = min(int(torch.searchsorted(cumulative, goal).item()), len(ranked) - 1)
    return float(ranked[index])


@dataclass
class Pruned:
    node_mask: torch.Tensor
    edge_mask: torch.Tensor
    """[targets, sources], like the adjacency."""
    node_influence: torch.Tensor
    """Each node's influence on the logits (unpruned graph)."""
    replacement_score: float
    completeness_score: float


@torch.no_grad()
def prune(graph: Graph, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> Pruned:
    for name, value in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be between 0 and 1, got {value}")
    weights = logit_weights(graph)
    matrix = normalized(graph.adjacency)
    read_layers = graph.read_layers
    node_scores = influence(matrix, weights, read_layers)
    errors = slice(graph.error_start, graph.token_start)
    token_influence = node_scores[graph.token_start : graph.logit_start].sum()
    error_influence = node_scores[errors].sum()
    replacement = float(token_influence / (token_influence + error_influence).clamp_min(1e-30))
    output_influence = node_scores + weights
    non_error = 1 - matrix[:, errors].sum(1)
    completeness = float((non_error * output_influence).sum() / output_influence.sum())

    keep = node_scores >= _threshold(node_scores, node_threshold)
    keep[graph.token_start :] = True
    matrix[~keep] = 0
    matrix[:, ~keep] = 0
    normalize_rows_(matrix)
    target_scores = influence(matrix, weights, read_layers) + weights
    matrix.mul_(target_scores[:, None])
    edge_floor = _matrix_threshold(matrix, edge_threshold)
    edges = matrix >= edge_floor if edge_floor > 0 else matrix > 0
    del matrix
    inner = slice(0, graph.token_start)
    while True:
        before = keep.clone()
        keep[inner] &= edges[:, inner].any(0)
        keep[: graph.n_features] &= edges[: graph.n_features].any(1)
        edges[~keep] = False
        edges[:, ~keep] = False
        if torch.equal(before, keep):
            break
    return Pruned(keep, edges, node_scores, replacement, completeness)


def keep_top_features(graph: Graph, keep: int | None) -> Graph:
    """The graph restricted to the `keep` features of most influence on the logits (others dropped, with
    their edges); the graph itself when it has no more. Call it once the replacement model is freed:
    it holds the adjacency, its normalized copy and the smaller result at once."""
    if keep is None or graph.n_features <= keep:
        return graph
    influence = node_influence(graph)[: graph.n_features]
    chosen = influence.topk(keep).indices.sort().values
    rows = torch.cat([chosen, torch.arange(graph.n_features, graph.n_nodes, device=chosen.device)])
    f = graph.features
    features = Features(f.layer[chosen], f.position[chosen], f.index[chosen], f.activation[chosen])
    adjacency = graph.adjacency[rows[:, None], rows[None, :]]  # one gather, no intermediate copy
    return dataclasses.replace(graph, features=features, adjacency=adjacency)

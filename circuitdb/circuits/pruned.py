"""A stored graph (its pruned `graph_nodes` and `graph_edges` rows) as arrays, and what a reader asks of it.

Influence is the quantity pruning ranks by (see `circuitdb/attribution/pruning.py`): on the row-normalized
|A| (each target's incoming weights sum to 1), a node's influence on the chosen logits is wᵀ(Â + Â² + …),
summed by repeated products over the edge list (no dense matrix: a 7,500-feature graph keeps ~700k edges
among ~3k nodes). Here it is computed on the *pruned* graph, towards one logit or all of them:
- `for_logit`: each node's influence and each edge's score (its normalized weight times its target's
  influence plus the target's own logit weight), so a page loads the edges that matter for that logit;
- `top_paths`: the paths from a token through features into the logit whose product of normalized weights
  is largest (beam search);
- `subgraph_scores`: replacement and completeness of a pinned subgraph as Neuronpedia's circuit UI computes
  them with circuit-tracer's formulas: the pinned features, the errors pinned or linked to a pinned node,
  every token and every logit, and the edges among them.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import polars as pl

from circuitdb.errors import CircuitDBError


class Reading(NamedTuple):
    """Influence towards the chosen logits on the pruned graph."""

    node_scores: np.ndarray
    """[nodes] each node's influence (a logit's own weight for logits)."""
    edge_scores: np.ndarray
    """[edges] normalized weight × (target's influence + target's logit weight)."""


class Path(NamedTuple):
    nodes: list[str]
    """From the path's start (a token, an error or a feature with no kept input) to the logit."""
    share: float
    """Product of the normalized |weights| along it: the share of the logit's input it carries."""


class Scores(NamedTuple):
    replacement: float
    completeness: float
    n_nodes: int
    n_edges: int


class PrunedGraph:
    """Nodes (node_id, kind, activation: a logit's probability) and edges (source, target, weight) of one graph."""

    def __init__(self, nodes: pl.DataFrame, edges: pl.DataFrame) -> None:
        self.ids: list[str] = nodes["node_id"].to_list()
        self.index = {node_id: i for i, node_id in enumerate(self.ids)}
        self.kinds = np.asarray(nodes["kind"].to_list())
        self.probabilities = np.where(self.kinds == "logit", nodes["activation"].fill_null(0).to_numpy(), 0.0)
        numbered = nodes.select("node_id").with_row_index("number")
        known = edges.join(numbered.rename({"node_id": "source", "number": "s"}), on="source").join(
            numbered.rename({"node_id": "target", "number": "t"}), on="target"
        )
        self.sources = known["s"].to_numpy().astype(np.int64)
        self.targets = known["t"].to_numpy().astype(np.int64)
        self.weights = known["weight"].to_numpy().astype(np.float64)
        self.edges = known.select("source", "target", "weight")
        """The edges whose both ends are nodes, in the order of `sources`, `targets`, `weights`."""

    @property
    def n_nodes(self) -> int:
        return len(self.ids)

    def logit_weights(self, logit: str | None) -> np.ndarray:
        """One-hot on `logit`, or every logit weighted by its probability (as pruning weighs them)."""
        if logit is None:
            return self.probabilities.copy()
        if self.index.get(logit) is None or self.kinds[self.index[logit]] != "logit":
            logits = [i for i, kind in zip(self.ids, self.kinds, strict=True) if kind == "logit"]
            raise CircuitDBError(f"{logit!r} is not one of the graph's logits ({', '.join(logits)})")
        weights = np.zeros(self.n_nodes)
        weights[self.index[logit]] = 1.0
        return weights

    def for_logit(self, logit: str | None) -> Reading:
        weights = self.logit_weights(logit)
        normalized = _normalized(self.weights, self.targets, self.n_nodes)
        influence = _influence(normalized, self.sources, self.targets, weights)
        return Reading(influence + weights, normalized * (influence + weights)[self.targets])

    def top_paths(self, logit: str, count: int = 5, beam: int = 64, fan_in: int = 16) -> list[Path]:
        """The `count` paths from a token through one or more features into `logit` that carry the largest share
        of its input (errors left out: a path through one explains nothing; a token's direct edge is no
        circuit), by a beam search backwards over each node's `fan_in` strongest inputs."""
        self.logit_weights(logit)  # checks the name
        shares = _normalized(self.weights, self.targets, self.n_nodes)
        readable = self.kinds[self.sources] != "error"
        order = np.lexsort((-shares, self.targets))
        order = order[readable[order]]
        starts = np.searchsorted(self.targets[order], np.arange(self.n_nodes + 1))
        frontier, finished = [([self.index[logit]], 1.0)], []
        while frontier:
            grown = []
            for path, share in frontier:
                head = path[0]
                feeding = order[starts[head] : starts[head + 1]][:fan_in]
                if self.kinds[head] == "token" and len(path) > 2:
                    finished.append((path, share))
                grown.extend(([int(self.sources[e]), *path], share * float(shares[e])) for e in feeding)
            frontier = sorted(grown, key=lambda item: -item[1])[:beam]
        best = sorted(finished, key=lambda item: -item[1])[:count]
        return [Path([self.ids[i] for i in path], share) for path, share in best]

    def subgraph_scores(self, pinned: list[str]) -> Scores:
        """Replacement and completeness of the subgraph that `pinned` spans (see the module's docstring)."""
        unknown = sorted(set(pinned) - set(self.index))
        if unknown:
            raise CircuitDBError(f"the graph has no node {unknown[0]!r} (after pruning)")
        chosen = np.zeros(self.n_nodes, dtype=bool)
        chosen[[self.index[node_id] for node_id in pinned]] = True
        if not (chosen & (self.kinds == "feature")).any():
            raise CircuitDBError("pin at least one feature to score a subgraph")
        touching = chosen[self.sources] | chosen[self.targets]
        linked_errors = np.zeros(self.n_nodes, dtype=bool)
        linked_errors[self.sources[touching]] = True
        linked_errors[self.targets[touching]] = True
        keep = np.isin(self.kinds, ("token", "logit")) | chosen | (linked_errors & (self.kinds == "error"))
        keep &= (self.kinds != "feature") | chosen
        inside = keep[self.sources] & keep[self.targets]
        return _scores(self, inside)

    def scores(self) -> Scores:
        """Replacement and completeness of the whole pruned graph."""
        return _scores(self, np.ones(len(self.sources), dtype=bool))


def _normalized(weights: np.ndarray, targets: np.ndarray, n_nodes: int) -> np.ndarray:
    """|weight| / the sum of |weights| into its target (each target's input sums to 1)."""
    magnitude = np.abs(weights)
    totals = np.bincount(targets, weights=magnitude, minlength=n_nodes)
    return magnitude / np.maximum(totals, 1e-10)[targets]


def _influence(normalized: np.ndarray, sources: np.ndarray, targets: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """wᵀ(Â + Â² + …) over the edge list; the graph is acyclic, so the products vanish after its depth."""
    n_nodes = len(weights)
    current = np.bincount(sources, weights=weights[targets] * normalized, minlength=n_nodes)
    total = current.copy()
    for _ in range(n_nodes):
        if not current.any():
            return total
        current = np.bincount(sources, weights=current[targets] * normalized, minlength=n_nodes)
        total += current
    raise CircuitDBError("the graph's edges form a cycle")


def _scores(graph: PrunedGraph, inside: np.ndarray) -> Scores:
    """circuit-tracer's replacement and completeness on the edges `inside` (and the nodes they join)."""
    sources, targets = graph.sources[inside], graph.targets[inside]
    normalized = _normalized(graph.weights[inside], targets, graph.n_nodes)
    weights = graph.logit_weights(None)
    influence = _influence(normalized, sources, targets, weights)
    kinds = graph.kinds
    token_influence = influence[kinds == "token"].sum()
    error_influence = influence[kinds == "error"].sum()
    replacement = float(token_influence / max(token_influence + error_influence, 1e-30))
    from_errors = np.bincount(targets, weights=normalized * (kinds[sources] == "error"), minlength=graph.n_nodes)
    output_influence = influence + weights
    completeness = float(((1 - from_errors) * output_influence).sum() / max(output_influence.sum(), 1e-30))
    present = np.zeros(graph.n_nodes, dtype=bool)
    present[sources] = present[targets] = True
    return Scores(replacement, completeness, int(present.sum()), int(inside.sum()))

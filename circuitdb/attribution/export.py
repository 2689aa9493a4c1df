"""A pruned graph as table rows (`graph_nodes`, `graph_edges`) and as circuit-tracer's graph JSON.

Node ids follow circuit-tracer: features `<layer>_<index>_<position>`, tokens `E_<token id>_<position>`,
targets `<n_layers + 1>_<token id>_<position>` (a target that is no single token has circuit-tracer's
virtual id, vocabulary size + its index); error nodes are `err_<layer>_<position>` (circuit-tracer's
`0_<layer>_<position>` can collide with a layer-0 feature's id). The same ids are used in the tables
and in the JSON, so an edge found by SQL is the edge a viewer draws. Target nodes are of kind 'logit'
(the graph's outputs) whatever they read; their label says what they are.
"""

from __future__ import annotations

import polars as pl

from circuitdb.attribution.graph import Graph
from circuitdb.attribution.pruning import Pruned
from circuitdb.store import feature_ids


def node_ids(graph: Graph) -> list[str]:
    f, P = graph.features, graph.n_positions
    ids = [
        f"{layer}_{index}_{pos}"
        for layer, pos, index in zip(f.layer.tolist(), f.position.tolist(), f.index.tolist(), strict=True)
    ]
    ids += [f"err_{layer}_{pos}" for layer in range(graph.n_layers) for pos in range(P)]
    ids += [f"E_{token}_{pos}" for pos, token in enumerate(graph.ids)]
    _, position = graph.target_at
    ids += [f"{graph.n_layers + 1}_{token}_{position}" for token in graph.logit_tokens]
    return ids


def _kinds(graph: Graph) -> list[str]:
    return (
        ["feature"] * graph.n_features
        + ["error"] * (graph.n_layers * graph.n_positions)
        + ["token"] * graph.n_positions
        + ["logit"] * len(graph.logit_tokens)
    )


def node_frame(
    graph: Graph,
    pruned: Pruned,
    slug: str,
    dictionary: str,
    tokens: list[str],
    logit_tokens: list[str],
    labels: dict[str, str],
) -> pl.DataFrame:
    """`graph_nodes` rows of the nodes pruning kept."""
    f, P, L = graph.features, graph.n_positions, graph.n_layers
    n_err, n_targets = L * P, len(graph.logit_tokens)
    target_layer, target_position = graph.target_at
    layer = f.layer.tolist() + [lay for lay in range(L) for _ in range(P)] + [-1] * P + [target_layer] * n_targets
    position = f.position.tolist() + list(range(P)) * L + list(range(P)) + [target_position] * n_targets
    index = f.index.tolist() + [-1] * n_err + graph.ids + graph.logit_tokens
    token = [tokens[p] for p in position[: graph.logit_start]] + logit_tokens
    activation = f.activation.float().tolist() + [0.0] * (n_err + P) + graph.logit_probabilities.tolist()
    ids = feature_ids(dictionary, f.layer.tolist(), f.index.tolist())
    label = [labels.get(fid, "") for fid in ids]
    label += [f"MLP error, layer {lay}, position {pos}" for lay in range(L) for pos in range(P)]
    label += [f"token {t!r}" for t in tokens] + target_labels(graph, logit_tokens)
    frame = pl.DataFrame(
        {
            "slug": slug,
            "node_id": node_ids(graph),
            "kind": _kinds(graph),
            "feature_id": ids + [None] * (graph.n_nodes - graph.n_features),
            "layer": layer,
            "position": position,
            "index": index,
            "token": token,
            "activation": activation,
            "influence": pruned.node_influence.float().cpu().numpy(),
            "label": label,
        }
    )
    return frame.filter(pl.Series(pruned.node_mask.cpu().numpy()))


def target_labels(graph: Graph, logit_tokens: list[str]) -> list[str]:
    """What each target node is: 'output ' Paris' (p=0.412)' for a token, else 'target: <what>'."""
    if not graph.targets_are_logits:
        return [f"target: {label}" for label in graph.target_labels]
    probabilities = graph.logit_probabilities.tolist()
    return [f"output {t!r} (p={p:.3f})" for t, p in zip(logit_tokens, probabilities, strict=True)]


def edge_frame(graph: Graph, pruned: Pruned, slug: str) -> pl.DataFrame:
    """`graph_edges` rows of the edges pruning kept."""
    targets, sources = pruned.edge_mask.nonzero(as_tuple=True)
    ids = pl.Series(node_ids(graph))
    return pl.DataFrame(
        {
            "slug": slug,
            "source": ids.gather(sources.cpu().numpy()),
            "target": ids.gather(targets.cpu().numpy()),
            "weight": graph.adjacency[targets, sources].float().cpu().numpy(),
        }
    )

"""Our graphs keep circuit-tracer's nodes and scores, without its side environment.

`benchmarks/vs_circuit_tracer.py --write-fixture` ran circuit-tracer 0.5.0 (attribute, prune_graph,
compute_graph_scores) on the embedded model with the benchmark's random transcoder set and wrote the
nodes its pruned graph kept and its scores into `tests/fixtures/vs_circuit_tracer.json`. Here the same
set is rebuilt from its seed and our graph of the same prompt must keep the same nodes (its position rule
included: no error node at the BOS position) and have the same replacement and completeness scores.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from circuitdb.attribution import Transcoders, attribute, prune
from circuitdb.attribution.pipeline import trace_prompt
from circuitdb.config import AttributionConfig
from circuitdb.models import load_model

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import vs_circuit_tracer as bench  # noqa: E402

PROMPT = "random/code"


def _node_keys(graph, pruned) -> set[tuple]:
    """The kept nodes by meaning, as the benchmark matches them."""
    f, P = graph.features, graph.n_positions
    keys: list[tuple] = [
        ("feature", layer, position, index)
        for layer, position, index in zip(f.layer.tolist(), f.position.tolist(), f.index.tolist(), strict=True)
    ]
    keys += [("error", layer, position) for layer in range(graph.n_layers) for position in range(P)]
    keys += [("token", position) for position in range(P)]
    keys += [("logit", token) for token in graph.logit_tokens]
    return {key for key, kept in zip(keys, pruned.node_mask.tolist(), strict=True) if kept}


def test_same_nodes_and_scores_as_circuit_tracer() -> None:
    pinned = json.loads(bench.FIXTURE.read_text())["graphs"][PROMPT]
    lm = load_model("embedded", "cpu")
    transcoders = Transcoders(bench.random_set(lm), name="random")
    rm = trace_prompt(lm, pinned["text"], transcoders, AttributionConfig())
    graph = attribute(rm, progress=False)
    pruned = prune(graph)
    ours, theirs = _node_keys(graph, pruned), {tuple(key) for key in pinned["their_nodes"]}
    assert graph.n_active_features == pinned["their_scores"]["n_active_features"]
    assert len(ours & theirs) / len(ours | theirs) >= 0.99
    assert not any(key[0] == "error" and key[2] == 0 for key in ours)  # circuit-tracer's zero_positions
    assert pruned.replacement_score == pytest.approx(pinned["their_scores"]["replacement_score"], abs=1e-3)
    assert pruned.completeness_score == pytest.approx(pinned["their_scores"]["completeness_score"], abs=1e-3)

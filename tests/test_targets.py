"""Attribution targets and circuit-tracer's position rule, checked against independent measurements.

On a 12-layer random Llama in float64 (feature targets name their layer in a string):
- with the leading positions' errors as constants (circuit-tracer's `zero_positions`), those error
  columns are zero, every other edge is unchanged, and each target is still its incoming edges plus
  a bias that now holds those constants;
- every target kind's row equals the finite difference of the target's value measured in the frozen
  replacement model (a forward pass with hooks, none of `graph.py`'s backward arithmetic).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from circuitdb.attribution import TargetSpec, Transcoders, attribute, prune, trace
from circuitdb.attribution.replacement_model import Features, start_positions
from circuitdb.errors import CircuitDBError
from circuitdb.models import load_model
from circuitdb.store.graphs import graph_slug
from tests.test_attribution import _per_layer

PROMPT = "The quick brown fox jumps over"
LAYERS = 12


def _transcoders() -> Transcoders:
    return Transcoders(_per_layer(list(range(LAYERS)), seed=3).per_layer, name="plt")


@pytest.fixture(scope="module")
def lm12(deep_llama_dirs):
    lm = load_model(str(deep_llama_dirs[LAYERS]), device="cpu")
    lm.model.double()
    return lm


@pytest.fixture(scope="module")
def traced(lm12):
    """(replacement model with errors as nodes, the same with circuit-tracer's constant BOS errors)."""
    ids = lm12.encode(PROMPT)
    return trace(lm12, ids, _transcoders()), trace(lm12, ids, _transcoders(), start_error_nodes=False)


def _values(rm, graph, spec: TargetSpec, features=None, errors=True, embeds=None) -> torch.Tensor:
    """Each target's value measured in the frozen replacement model: what its vector reads at the
    unembedding's input (or a feature's pre-activation at its layer's MLP input)."""
    lm = rm.lm
    unembedding = lm.model.get_output_embeddings()
    finals, mlp_in = [], {}
    handle = unembedding.register_forward_pre_hook(lambda module, args: finals.append(args[0][0]))
    try:
        rm.run(features, errors=errors, inputs_embeds=embeds, read=lambda layer, x: mlp_in.update({layer: x}))
    finally:
        handle.remove()
    U = unembedding.weight
    last = finals[0][-1]
    if spec.feature:
        layer, index, position = 7, 5, 4
        coder = rm.transcoders.per_layer[layer]
        return (coder.W_enc[index] @ mlp_in[layer][position] + coder.b_enc[index])[None]
    if spec.vector:
        return (torch.from_numpy(np.load(spec.vector)) @ last)[None]
    if spec.minus is not None:
        a, b = (lm.encode(t, add_bos=False)[0] for t in (spec.tokens[0], spec.minus))
        return ((U[a] - U[b]) @ last)[None]
    return (U[graph.logit_tokens] - U.mean(0)) @ last


def _finite_differences(rm, graph, spec: TargetSpec) -> None:
    """Every column of the target rows equals the change of the targets' values when that source grows."""
    rows, eps = torch.arange(graph.logit_start, graph.n_nodes), 1e-3
    clean = _values(rm, graph, spec)
    f = graph.features
    for source in range(graph.n_features):
        scaled = Features(f.layer, f.position, f.index, f.activation.clone())
        scaled.activation[source] *= 1 + eps
        measured = (_values(rm, graph, spec, scaled) - clean) / eps
        torch.testing.assert_close(measured, graph.adjacency[rows, source], rtol=1e-4, atol=1e-9)
    errors = rm.errors.clone()
    for layer in range(graph.n_layers):
        for position in range(graph.n_positions):
            rm.errors[layer, position] *= 1 + eps
            measured = (_values(rm, graph, spec) - clean) / eps
            rm.errors.copy_(errors)
            column = graph.error_start + layer * graph.n_positions + position
            torch.testing.assert_close(measured, graph.adjacency[rows, column], rtol=1e-4, atol=1e-9)
    embeddings = rm.lm.model.get_input_embeddings()(rm.ids)
    for position in range(graph.n_positions):
        embeds = embeddings.clone()
        embeds[position] *= 1 + eps
        measured = (_values(rm, graph, spec, embeds=embeds) - clean) / eps
        torch.testing.assert_close(measured, graph.adjacency[rows, graph.token_start + position], rtol=1e-4, atol=1e-9)
    assert graph.adjacency[rows, : graph.n_features].count_nonzero() > 10, "too few feature edges to mean anything"


def test_constant_start_errors_are_no_nodes_and_change_no_other_edge(traced) -> None:
    with_nodes, constant = traced
    plain = constant.lm.model(input_ids=constant.ids[None]).logits[0]
    assert torch.allclose(constant.run(), plain, atol=1e-5)  # HF's RMSNorm rounds to float32 in 12 layers
    torch.testing.assert_close(constant.run(), with_nodes.run(), rtol=0, atol=1e-12)  # errors + constants
    nodes, graph = attribute(with_nodes, progress=False), attribute(constant, progress=False)
    start_columns = graph.error_start + torch.arange(graph.n_layers) * graph.n_positions  # err_<layer>_0
    assert not graph.adjacency[:, start_columns].any()
    assert nodes.adjacency[:, start_columns].abs().sum() > 0  # they were real sources
    others = torch.ones(graph.n_nodes, dtype=torch.bool)
    others[start_columns] = False
    torch.testing.assert_close(graph.adjacency[:, others], nodes.adjacency[:, others], rtol=1e-9, atol=1e-12)
    pruned = prune(graph)
    assert not pruned.node_mask[start_columns].any() and not pruned.node_influence[start_columns].any()


def test_constant_start_errors_are_biases_of_every_target(traced) -> None:
    """Target = incoming edges + what remains with every node's source zero (the constants stay)."""
    _, rm = traced
    graph = attribute(rm, progress=False)
    spec = TargetSpec()
    f = graph.features
    nothing = Features(f.layer, f.position, f.index, torch.zeros_like(f.activation))
    bias = _values(rm, graph, spec, nothing, errors=False, embeds=torch.zeros(graph.n_positions, 64).double())
    incoming = graph.adjacency[graph.logit_start :]
    rounding = 1e-9 + 1e-13 * incoming.abs().sum(1)  # BOS edges of ~1e11 cancel in float64
    assert ((incoming.sum(1) + bias - _values(rm, graph, spec)).abs() <= rounding).all()
    _finite_differences(rm, graph, spec)


def test_gemma3_instruction_tuned_models_start_after_the_chat_prefix(model_dirs) -> None:
    lm = load_model(str(model_dirs["gemma3"]), device="cpu")
    assert start_positions(lm) == 1
    lm.name = "google/gemma-3-1b-it"
    assert start_positions(lm) == 4
    first = Transcoders({0: _transcoders().per_layer[0]})
    rm = trace(lm, lm.encode(PROMPT), first, 4, start_error_nodes=False)
    assert not (rm.features.position < 4).any() and not rm.errors[:, :4].any() and rm.constants[:, :4].any()
    with pytest.raises(CircuitDBError, match="the first 4 are constants"):
        trace(lm, lm.encode(PROMPT)[:3], first, 4)


@pytest.mark.parametrize("kind", ["tokens", "difference", "vector", "feature"])
def test_every_target_row_is_a_finite_difference(kind: str, traced, tmp_path: Path) -> None:
    _, rm = traced
    lm = rm.lm
    vector = tmp_path / "direction.npy"
    np.save(vector, np.random.default_rng(0).normal(size=64))
    spec = {
        "tokens": TargetSpec(tokens=(" the", "id:7")),
        "difference": TargetSpec(tokens=(" the",), minus=" over"),
        "vector": TargetSpec(vector=str(vector)),
        "feature": TargetSpec(feature="plt/7/5@4"),
    }[kind]
    graph = attribute(rm, progress=False, target=spec)
    assert graph.target.startswith(kind) and len(graph.logit_tokens) == len(spec.tokens or [None])
    if kind == "tokens":
        probabilities = rm.logits[-1].softmax(-1)[[lm.encode(" the", add_bos=False)[0], 7]]
        torch.testing.assert_close(graph.logit_probabilities.double(), probabilities.cpu())
    else:
        assert graph.logit_probabilities.tolist() == [1.0] and graph.logit_tokens == [lm.config.vocab_size]
    if kind == "feature":  # only earlier layers and positions drive it
        f = graph.features
        row = graph.adjacency[graph.logit_start]
        assert not row[: graph.n_features][(f.layer >= 7) | (f.position > 4)].any()
        assert graph.target_at == (7, 4)
    _finite_differences(rm, graph, spec)


def test_a_difference_is_the_difference_of_its_tokens_rows(traced) -> None:
    _, rm = traced
    tokens = attribute(rm, progress=False, target=TargetSpec(tokens=(" the", " over")))
    difference = attribute(rm, progress=False, target=TargetSpec(tokens=(" the",), minus=" over"))
    sources = slice(0, tokens.logit_start)  # the same features, errors and tokens in both
    expected = tokens.adjacency[tokens.logit_start, sources] - tokens.adjacency[tokens.logit_start + 1, sources]
    torch.testing.assert_close(difference.adjacency[difference.logit_start, sources], expected, rtol=1e-9, atol=1e-9)


def test_targets_are_part_of_the_graphs_identity_and_bad_ones_are_one_line(traced, tmp_path: Path) -> None:
    _, rm = traced
    graphs = [attribute(rm, progress=False, target=spec) for spec in (TargetSpec(), TargetSpec(tokens=(" the",)))]
    slugs = {graph_slug(PROMPT, "m", "plt", graph.target) for graph in graphs}
    assert len(slugs) == 2 and graph_slug(PROMPT, "m", "plt") in slugs  # the top logits keep the old slug
    wide = tmp_path / "wide.npy"
    np.save(wide, np.zeros(65))
    for spec, message in (
        (TargetSpec(tokens=(" the quick",)), "exactly one token"),
        (TargetSpec(tokens=("id:999999",)), "token ids run from 0"),
        (TargetSpec(vector=str(wide)), "expected 64 finite values"),
        (TargetSpec(feature="plt/12/5@4"), "no transcoder reads layer 12"),
        (TargetSpec(feature="plt/7/32@4"), "has 32 latents"),
        (TargetSpec(feature="plt/7/5@40"), "outside the prompt"),
        (TargetSpec(feature="plt/7/5"), "expected <dictionary>"),
        (TargetSpec(feature="clt/7/5@4"), "the graph's transcoders are 'plt'"),
        (TargetSpec(tokens=(" the",), vector=str(wide)), "one kind of target"),
    ):
        with pytest.raises(CircuitDBError, match=message):
            attribute(rm, progress=False, target=spec)

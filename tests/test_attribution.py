"""Attribution graphs checked against independent measurements in float64 on a tiny random Llama.

- the replacement model reproduces the model's logits, and without errors equals a hand-written
  frozen forward pass of the transcoders alone;
- every edge equals a finite-difference measurement in the frozen replacement model (HF modules);
- each target equals the sum of its incoming edges plus what remains when every source is zero;
- zeroing a feature with attention and MLPs frozen moves a logit by minus its edge.
Per-layer transcoders (all layers, and only some layers) and a cross-layer transcoder.
"""

from __future__ import annotations

import importlib

import pytest
import torch

from circuitdb.attribution import Intervention, Transcoders, attribute, intervene, prune, trace
from circuitdb.attribution.replacement_model import Features
from circuitdb.config import DictionaryConfig
from circuitdb.dictionaries import SparseCoder
from circuitdb.dictionaries.cross_layer_transcoder import CrossLayerTranscoder
from circuitdb.models import LoadedModel, load_model

PROMPT = "The quick brown fox jumps over"


def _per_layer(layers: list[int], seed: int = 0) -> Transcoders:
    torch.manual_seed(seed)
    coders = {}
    for layer in layers:
        coder = SparseCoder(DictionaryConfig(kind="plt", n_latents=32, k=4, skip=True), 64, 64)
        with torch.no_grad():
            coder.W_skip.normal_(std=0.05)
            coder.b_dec.normal_(std=0.1)
            coder.W_dec.mul_(0.5)
        coders[layer] = coder
    return Transcoders(coders)


def _cross_layer(seed: int = 0) -> Transcoders:
    torch.manual_seed(seed)
    clt = CrossLayerTranscoder(DictionaryConfig(kind="clt", activation="relu", n_latents=24, k=4, skip=False), 3, 64)
    with torch.no_grad():
        clt.b_enc.fill_(-0.5)
        clt.b_dec.normal_(std=0.1)
    return Transcoders(clt=clt)


@pytest.fixture(scope="module")
def models64(model_dirs) -> dict[str, LoadedModel]:
    """Tiny models of every architecture in float64, loaded on first use."""

    class Models(dict):
        def __missing__(self, kind: str) -> LoadedModel:
            lm = load_model(str(model_dirs[kind]), device="cpu")
            lm.model.double()
            lm.model.config.final_logit_softcapping = None  # edges end at pre-cap logits, as circuit-tracer's
            self[kind] = lm
            return lm

    return Models()


_CASES = {
    "all-layers": ("llama", lambda: _per_layer([0, 1, 2])),
    "some-layers": ("llama", lambda: _per_layer([0, 2])),
    "cross-layer": ("llama", _cross_layer),
    **{
        kind: (kind, lambda: _per_layer([0, 1, 2]))
        for kind in ("gpt2", "llama3", "qwen3", "mistral", "gemma2", "gemma3")
    },
}


@pytest.fixture(scope="module", params=list(_CASES))
def traced(request: pytest.FixtureRequest, models64):
    kind, transcoders = _CASES[request.param]
    lm = models64[kind]
    rm = trace(lm, lm.encode(PROMPT), transcoders())
    assert len(rm.features) > 10, "the test needs active features"
    return rm, attribute(rm, progress=False)


def _targets(rm, graph, features: Features | None = None, errors: bool = True, embeds=None) -> torch.Tensor:
    """Every target's value measured in the frozen replacement model: feature pre-activations, demeaned logits."""
    f = graph.features
    values = torch.zeros(graph.n_features + len(graph.logit_tokens), dtype=torch.float64)
    mlp_in = {}
    logits = rm.run(features, errors=errors, inputs_embeds=embeds, read=lambda layer, x: mlp_in.update({layer: x}))
    for i in range(graph.n_features):
        rows, bias = rm.transcoders.encoder(int(f.layer[i]), f.index[i : i + 1])
        values[i] = rows[0] @ mlp_in[int(f.layer[i])][f.position[i]] + bias[0]
    last = logits[-1]
    values[graph.n_features :] = last[graph.logit_tokens] - last.mean()
    return values


def _target_rows(graph) -> torch.Tensor:
    return torch.cat([torch.arange(graph.n_features), torch.arange(graph.logit_start, graph.n_nodes)])


def test_replacement_model_reproduces_the_model(traced) -> None:
    rm, _ = traced
    plain = rm.lm.model(input_ids=rm.ids[None]).logits[0]
    assert torch.allclose(rm.run(), plain, atol=1e-6)  # HF's RMSNorm computes in float32 even in a float64 model
    assert not torch.allclose(rm.run(errors=False), plain, atol=1e-3)


def test_without_errors_the_replacement_is_the_transcoders_alone(traced) -> None:
    """A hand-written forward (Llama family, Gemma or GPT-2) with frozen patterns/norms whose MLPs are the
    transcoders."""
    rm, _ = traced
    scales, patterns, latents = rm.freezer.scales, rm.freezer.patterns, rm.latents()
    positions = len(rm.ids)

    def mlp(layer: int, x: torch.Tensor, mlp_in: torch.Tensor) -> torch.Tensor:
        return x + rm.transcoders.reconstruct(layer, mlp_in, latents) if layer in rm.transcoders.layers else x

    model_type = rm.lm.config.model_type
    if model_type == "gpt2":
        model = rm.lm.model.transformer
        centred = lambda v: v - v.mean(-1, keepdim=True)  # noqa: E731
        x = model.wte.weight[rm.ids] + model.wpe.weight[:positions]
        for layer, block in enumerate(model.h):
            normed = centred(x) * scales[f"{layer}.attention"] * block.ln_1.weight + block.ln_1.bias
            d, heads = x.shape[1], rm.lm.config.n_head
            values = (normed @ block.attn.c_attn.weight + block.attn.c_attn.bias)[:, 2 * d :]
            values = values.view(positions, heads, d // heads).transpose(0, 1)
            mixed = (patterns[layer] @ values).transpose(0, 1).reshape(positions, d)
            x = x + mixed @ block.attn.c_proj.weight + block.attn.c_proj.bias
            x = mlp(layer, x, centred(x) * scales[f"{layer}.mlp"] * block.ln_2.weight + block.ln_2.bias)
        final = centred(x) * scales["final"] * model.ln_f.weight + model.ln_f.bias
        logits = final @ rm.lm.model.lm_head.weight.T
    else:  # Llama family, and Gemma: √d embeddings, (1 + w) norms, post-norms on both sublayers
        gemma = model_type.startswith("gemma")
        model, offset = rm.lm.model.model, 1.0 if gemma else 0.0
        x = model.embed_tokens.weight[rm.ids] * (rm.lm.d_model**0.5 if gemma else 1.0)
        for layer, block in enumerate(model.layers):
            attn = block.self_attn
            normed = x * scales[f"{layer}.attention"] * (offset + block.input_layernorm.weight)
            values = (normed @ attn.v_proj.weight.T).view(positions, -1, attn.head_dim)
            values = values.repeat_interleave(attn.num_key_value_groups, dim=1).transpose(0, 1)
            attn_out = (patterns[layer] @ values).transpose(0, 1).reshape(positions, -1) @ attn.o_proj.weight.T
            if gemma:
                attn_out = attn_out * scales[f"{layer}.attention_out"] * (1 + block.post_attention_layernorm.weight)
            x = x + attn_out
            mlp_norm = block.pre_feedforward_layernorm if gemma else block.post_attention_layernorm
            x = mlp(layer, x, x * scales[f"{layer}.mlp"] * (offset + mlp_norm.weight))
        logits = (x * scales["final"] * (offset + model.norm.weight)) @ rm.lm.model.lm_head.weight.T
    assert torch.allclose(rm.run(errors=False), logits, atol=1e-9)


def test_every_edge_is_a_finite_difference(traced) -> None:
    rm, graph = traced
    rows, eps = _target_rows(graph), 1e-3
    clean = _targets(rm, graph)
    f = graph.features
    embeddings = rm.lm.model.get_submodule(rm.lm.arch.embedding)(rm.ids)  # Gemma's √d scale included
    checked = 0
    for source in range(graph.n_features):
        scaled = Features(f.layer, f.position, f.index, f.activation.clone())
        scaled.activation[source] *= 1 + eps
        measured = (_targets(rm, graph, scaled) - clean) / eps
        torch.testing.assert_close(measured, graph.adjacency[rows, source], rtol=1e-4, atol=1e-9)
        checked += int((graph.adjacency[rows, source] != 0).sum())
    errors = rm.errors.clone()
    for layer in range(graph.n_layers):
        for position in range(graph.n_positions):
            rm.errors[layer, position] *= 1 + eps
            measured = (_targets(rm, graph) - clean) / eps
            rm.errors.copy_(errors)
            column = graph.error_start + layer * graph.n_positions + position
            torch.testing.assert_close(measured, graph.adjacency[rows, column], rtol=1e-4, atol=1e-9)
    for position in range(graph.n_positions):
        embeds = embeddings.clone()
        embeds[position] *= 1 + eps
        measured = (_targets(rm, graph, embeds=embeds) - clean) / eps
        torch.testing.assert_close(measured, graph.adjacency[rows, graph.token_start + position], rtol=1e-4, atol=1e-9)
    assert checked > 50, "too few nonzero feature edges to mean anything"


def test_targets_are_their_incoming_edges_plus_bias(traced) -> None:
    rm, graph = traced
    f = graph.features
    nothing = Features(f.layer, f.position, f.index, torch.zeros_like(f.activation))
    bias = _targets(rm, graph, nothing, errors=False, embeds=torch.zeros(graph.n_positions, rm.lm.d_model).double())
    incoming = graph.adjacency[_target_rows(graph)]
    total = incoming.sum(1) + bias
    # float64 rounding grows with the terms summed: Gemma's post-norms at the BOS position give edges of ~1e8
    rounding = 1e-9 + 1e-13 * incoming.abs().sum(1)
    assert ((total - _targets(rm, graph)).abs() <= 1e-7 * total.abs() + rounding).all()
    activation_error = (total[: graph.n_features] - f.activation).abs()  # TopK/ReLU: activation = pre-activation
    assert (activation_error <= 1e-7 * f.activation.abs() + rounding[: graph.n_features]).all()


def test_zeroing_a_feature_moves_the_logit_by_its_edge(traced) -> None:
    rm, graph = traced
    top_logit = graph.logit_start
    source = int(graph.adjacency[top_logit, : graph.n_features].abs().argmax())
    f = graph.features
    zero = Intervention(int(f.layer[source]), int(f.index[source]), "zero", positions=[int(f.position[source])])
    result = intervene(rm, [zero], freeze_attention=True, frozen_layers=range(graph.n_layers))
    token = graph.logit_tokens[0]
    change = (result.logits[-1] - result.logits[-1].mean())[token] - (rm.logits[-1] - rm.logits[-1].mean())[token]
    assert change.item() == pytest.approx(-graph.adjacency[top_logit, source].item(), rel=1e-6)
    assert abs(change.item()) > 1e-4


def test_pruning_keeps_tokens_and_logits_and_scores_are_shares(traced) -> None:
    _, graph = traced
    pruned = prune(graph, node_threshold=0.98, edge_threshold=0.95)  # tiny random models: tokens carry most
    assert pruned.node_mask[graph.token_start :].all()
    assert 0 < pruned.node_mask[: graph.n_features].sum() < graph.n_features
    kept_edges = pruned.edge_mask.nonzero()
    assert pruned.node_mask[kept_edges[:, 0]].all() and pruned.node_mask[kept_edges[:, 1]].all()


def test_bucketed_threshold_equals_sorting_everything() -> None:
    from circuitdb.attribution.pruning import _matrix_threshold, _threshold

    torch.manual_seed(0)
    matrix = torch.rand(300, 200).pow(6) * (torch.rand(300, 200) > 0.3)
    for share in (0.5, 0.9, 0.98, 1.0):
        assert _matrix_threshold(matrix, share, rows_per_chunk=64) == pytest.approx(_threshold(matrix, share), rel=1e-6)


def test_keep_top_features_is_the_submatrix_of_the_most_influential(traced) -> None:
    from circuitdb.attribution import keep_top_features
    from circuitdb.attribution.pruning import node_influence

    _, graph = traced
    influence = node_influence(graph)[: graph.n_features]
    capped = keep_top_features(graph, 7)
    chosen = influence.topk(7).indices.sort().values
    assert capped.n_features == 7 and capped.n_active_features == graph.n_active_features
    assert torch.equal(capped.features.index, graph.features.index[chosen])
    rows = torch.cat([chosen, torch.arange(graph.n_features, graph.n_nodes)])
    assert torch.equal(capped.adjacency, graph.adjacency[rows][:, rows])
    assert keep_top_features(graph, graph.n_features) is graph


def test_a_graph_too_large_for_the_memory_limit_is_refused_before_allocating(traced) -> None:
    from circuitdb.attribution.attribute import memory_estimate
    from circuitdb.errors import CircuitDBError

    rm, graph = traced
    need = memory_estimate(graph.n_features, graph.n_layers, graph.n_positions, None, None).gb
    with pytest.raises(CircuitDBError, match="attribution.memory_gb"):
        attribute(rm, progress=False, memory_gb=need * 0.99)
    assert attribute(rm, progress=False, memory_gb=need * 1.01).n_nodes == graph.n_nodes


def test_edge_validation_holds_with_gemmas_final_softcap(model_dirs) -> None:
    """validate_edges measures logits before the final soft-cap, where edges end: with the cap on (3.0, far
    from linear) predicted and measured changes still agree."""
    from circuitdb.attribution.interventions import validate_edges

    lm = load_model(str(model_dirs["gemma2"]), device="cpu")
    lm.model.double()
    assert lm.model.config.final_logit_softcapping == 3.0
    rm = trace(lm, lm.encode(PROMPT), _per_layer([0, 1, 2]))
    checks = validate_edges(rm, attribute(rm, progress=False), 5)
    assert len(checks) == 5 and max(c["relative_error"] for c in checks) < 1e-6
    assert lm.model.config.final_logit_softcapping == 3.0  # restored


def _positions_in(graph, other) -> torch.Tensor:
    """Where each feature node of `other` sits among the feature nodes of `graph`."""
    key = lambda f: list(zip(f.layer.tolist(), f.position.tolist(), f.index.tolist(), strict=True))  # noqa: E731
    where = {feature: i for i, feature in enumerate(key(graph.features))}
    return torch.tensor([where[feature] for feature in key(other.features)], dtype=torch.long)


def test_influence_first_rows_are_the_dense_rows(traced) -> None:
    """With room for every feature, influence-first keeps every feature that has influence, and its graph is
    the dense graph's submatrix over the kept nodes (rows computed again, over the kept columns only)."""
    from circuitdb.attribution.pruning import node_influence

    rm, graph = traced
    first = attribute(rm, progress=False, max_feature_nodes=graph.n_features, influence_first=True)
    influence = node_influence(graph)[: graph.n_features]
    chosen = _positions_in(graph, first)
    assert set(chosen.tolist()) == set((influence > 0).nonzero().flatten().tolist())
    nodes = torch.cat([chosen, torch.arange(graph.n_features, graph.n_nodes)])
    torch.testing.assert_close(first.adjacency, graph.adjacency[nodes][:, nodes], rtol=1e-6, atol=1e-12)
    assert first.n_active_features == graph.n_features


def test_capped_influence_first_keeps_the_most_influential(traced) -> None:
    """A third of the features, chosen batch by batch from estimated influence: nearly the dense graph's top
    third by exact influence, and nearly all of its influence."""
    from circuitdb.attribution.pruning import node_influence

    rm, graph = traced
    cap = graph.n_features // 3
    capped = attribute(rm, progress=False, max_feature_nodes=cap, influence_first=True, batch_size=8)
    influence = node_influence(graph)[: graph.n_features]
    chosen = _positions_in(graph, capped).tolist()
    best = influence.topk(cap).indices.tolist()
    overlap = len(set(chosen) & set(best)) / cap
    share = float(influence[chosen].sum() / influence[best].sum())
    assert capped.n_features == cap and overlap >= 0.9 and share >= 0.99, (overlap, share)


def test_influence_in_one_pass_is_the_power_series(traced) -> None:
    """Influence solved layer by layer equals wᵀ(Â + Â² + …) summed until the products vanish."""
    from circuitdb.attribution.pruning import logit_weights, node_influence, normalized

    _, graph = traced
    matrix, weights = normalized(graph.adjacency), logit_weights(graph)
    current, expected = weights @ matrix, torch.zeros_like(weights)
    while current.any():
        expected += current
        current = current @ matrix
    torch.testing.assert_close(node_influence(graph), expected, rtol=1e-9, atol=1e-12)
    assert expected[: graph.n_features].any()


def test_capped_rows_kept_from_the_selection_are_the_dense_rows(traced12, monkeypatch: pytest.MonkeyPatch) -> None:
    """Influence-first with room for its rows keeps the ones the selection computed: the graph is the dense
    graph's submatrix over the kept nodes, as when they are computed again over the kept columns only."""
    rm, graph = traced12
    cap = graph.n_features // 3
    report = []
    kept = attribute(rm, progress=False, max_feature_nodes=cap, batch_size=16, report=report.append)
    assert report[0].influence_first and report[0].rows_kept and kept.n_features == cap
    nodes = torch.cat([_positions_in(graph, kept), torch.arange(graph.n_features, graph.n_nodes)])
    torch.testing.assert_close(kept.adjacency, graph.adjacency[nodes][:, nodes], rtol=1e-6, atol=1e-12)
    attribute_module = importlib.import_module("circuitdb.attribution.attribute")
    estimate = attribute_module.memory_estimate
    no_room = lambda *args: estimate(*args)._replace(rows_kept=False)  # noqa: E731
    monkeypatch.setattr(attribute_module, "memory_estimate", no_room)
    again = attribute(rm, progress=False, max_feature_nodes=cap, batch_size=16)
    torch.testing.assert_close(again.adjacency, kept.adjacency, rtol=1e-6, atol=1e-12)


def test_targets_in_chunks_give_the_same_rows(traced, monkeypatch: pytest.MonkeyPatch) -> None:
    """A long prompt's targets go through the sweep in chunks (bounded gradient memory): same rows."""
    attribute_module = importlib.import_module(
        "circuitdb.attribution.attribute"
    )  # the package's `attribute` is the function

    rm, graph = traced
    monkeypatch.setattr(attribute_module, "SCRATCH_BYTES", 64 * rm.lm.d_model)  # a handful of targets per chunk
    chunked = attribute(rm, progress=False)
    torch.testing.assert_close(chunked.adjacency, graph.adjacency, rtol=1e-6, atol=1e-12)


@pytest.fixture(scope="module")
def traced12(deep_llama_dirs):
    """12 layers with transcoders on 9 of them (gaps change where each layer's features start)."""
    lm = load_model(str(deep_llama_dirs[12]), device="cpu")
    lm.model.double()
    rm = trace(lm, lm.encode(PROMPT), _per_layer([0, 1, 3, 4, 5, 7, 8, 10, 11], seed=1))
    assert len(rm.features.layer.unique()) == 9
    return rm, attribute(rm, progress=False)


def test_selection_influence_is_the_power_series_of_the_rows_given(traced12) -> None:
    """The selection keeps each row only over the features of earlier layers; its influence equals the power
    series of the full normalized |A| restricted to the same rows, added in any order and grouping."""
    from circuitdb.attribution.attribute import _SelectionRows
    from circuitdb.attribution.pruning import normalized as normalized_rows

    rm, graph = traced12
    n_f, n_logits = graph.n_features, len(graph.logit_tokens)
    generator = torch.Generator().manual_seed(0)
    given = torch.randperm(n_f, generator=generator)[: n_f // 2]  # features with a row, in no order
    targets = torch.cat([given, torch.arange(graph.logit_start, graph.n_nodes)])
    normalized = normalized_rows(graph.adjacency[targets])
    assert not normalized[: len(given), :n_f][graph.features.layer[given, None] <= graph.features.layer].any()

    selection = _SelectionRows(graph.features, graph.n_layers)
    layers = torch.cat([graph.features.layer[given], torch.full((n_logits,), graph.n_layers)])
    columns = torch.cat([given, torch.full((n_logits,), -1)])
    weights = torch.cat([torch.zeros(len(given)), graph.logit_probabilities.float()])
    for part in torch.randperm(len(targets), generator=generator).chunk(5):
        selection.add(normalized[part], layers[part], columns[part], weights[part])

    expected = torch.zeros(n_f, dtype=torch.float64)  # x = (p + x restricted to the given rows) · N
    for _ in range(graph.n_layers + 1):
        row_weight = torch.cat([expected[given], graph.logit_probabilities.double()])
        expected = row_weight @ normalized[:, :n_f]
    torch.testing.assert_close(selection.influence().double(), expected, rtol=2e-2, atol=1e-6)


def test_influence_first_with_room_for_all_is_the_dense_graph_12_layers(traced12) -> None:
    from circuitdb.attribution.pruning import node_influence

    rm, graph = traced12
    first = attribute(rm, progress=False, max_feature_nodes=graph.n_features, influence_first=True, batch_size=16)
    chosen = _positions_in(graph, first)
    influence = node_influence(graph)[: graph.n_features]
    assert set(chosen.tolist()) == set((influence > 0).nonzero().flatten().tolist())
    nodes = torch.cat([chosen, torch.arange(graph.n_features, graph.n_nodes)])
    torch.testing.assert_close(first.adjacency, graph.adjacency[nodes][:, nodes], rtol=1e-6, atol=1e-12)

"""Attribution graph: the direct effect of every node on every later node, in the replacement model.

Nodes, in circuit-tracer's order: active features (layer, position, index), error nodes (layer ×
position), input-token embeddings (position), target logits. `adjacency[t, s]` is the direct effect of
source s on target t: s's write into the residual stream (activation × decoder row, the error vector,
or the token embedding) dotted with the gradient of t's pre-activation (or demeaned logit) with
respect to that residual, along frozen paths only — attention through its frozen pattern and value/
output projections, norms through their frozen 1/rms, transcoders through their linear skip, never
through another feature's nonlinearity. Logit targets are demeaned logits before any final soft-cap
(Gemma's tanh), as circuit-tracer's: the cap is left out rather than linearized, and the target
probabilities are the model's own (capped) ones.

How it is computed (exact, no sampling): one backward sweep from the last layer down carries the
residual-stream gradient of every target at once. Targets are grouped by their position p and only
positions ≤ p are carried (attention is causal); a target joins the sweep at its own layer. At each
layer the gradients are dotted with the writes of that layer's sources (one small matmul per source
position), then pushed through the skip and the attention's value/output path with three matmuls.
This is the same arithmetic as one backward pass per target, without the positions and layers where
that gradient is known to be zero: ~3.5x fewer multiply-adds than running every backward through the
whole model, and no autograd graph in memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from circuitdb.attribution.pruning import node_influence
from circuitdb.attribution.replacement_model import Features, ReplacementModel, is_centred
from circuitdb.errors import CircuitDBError
from circuitdb.models import LoadedModel


@dataclass
class Graph:
    """Nodes and dense adjacency [targets, sources] of one prompt; the last `n_logits` rows are logits."""

    ids: list[int]
    features: Features
    n_layers: int
    logit_tokens: list[int]
    logit_probabilities: torch.Tensor
    adjacency: torch.Tensor
    n_active_features: int
    """Active features before `max_feature_nodes` capped them."""

    @property
    def n_positions(self) -> int:
        return len(self.ids)

    @property
    def n_features(self) -> int:
        return len(self.features)

    @property
    def error_start(self) -> int:
        return self.n_features

    @property
    def token_start(self) -> int:
        return self.n_features + self.n_layers * self.n_positions

    @property
    def logit_start(self) -> int:
        return self.token_start + self.n_positions

    @property
    def n_nodes(self) -> int:
        return self.logit_start + len(self.logit_tokens)


def logit_targets(
    logits: torch.Tensor, cumulative: float = 0.95, max_logits: int = 10
) -> tuple[list[int], torch.Tensor]:
    """The most probable next tokens until their probabilities sum to `cumulative`, at most `max_logits`."""
    probabilities = logits.float().softmax(-1)
    top = probabilities.topk(max_logits)
    keep = int(torch.searchsorted(top.values.cumsum(0), torch.tensor(cumulative, device=top.values.device)).item()) + 1
    keep = min(keep, max_logits)
    return top.indices[:keep].tolist(), top.values[:keep].cpu()


def _value_output(attention: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(W_V [kv_heads·head_dim, d], W_O [d, heads·head_dim]) in Linear layout, for Llama-family
    (v_proj/o_proj) and GPT-2 (fused Conv1D c_attn, whose last third is V, and Conv1D c_proj)."""
    if hasattr(attention, "v_proj"):
        return attention.v_proj.weight, attention.o_proj.weight
    d = attention.c_attn.weight.shape[0]
    return attention.c_attn.weight[:, 2 * d :].T, attention.c_proj.weight.T


class _Norm:
    """A frozen norm's backward: scale by gain/rms per position, then (LayerNorm) remove the mean."""

    def __init__(self, lm: LoadedModel, module: torch.nn.Module, scale: torch.Tensor) -> None:
        self.gain = lm.norm_gain(module) * scale  # [P, d]
        self.centred = is_centred(module)

    def backward(self, grad: torch.Tensor, positions: int) -> torch.Tensor:
        """Gradients [n, positions, d] wrt the norm's output → wrt its input, at the first `positions`."""
        return self._through(grad, self.gain[:positions])

    def read(self, vectors: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Gradients wrt the norm's input of dot products with `vectors` [n, d] of its output at `positions`."""
        return self._through(vectors, self.gain[positions])

    def _through(self, grad: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
        out = grad * gain
        return out - out.mean(-1, keepdim=True) if self.centred else out


class _Weights:
    """Per-layer tensors of a block that the frozen backward pass needs."""

    def __init__(self, rm: ReplacementModel, layer: int) -> None:
        lm = rm.lm
        block = lm.block(layer)
        attention = block.get_submodule(lm.arch.attention)
        scales = rm.freezer.scales
        self.W_V, self.W_O = _value_output(attention)
        self.heads = lm.config.num_attention_heads
        self.head_dim = self.W_O.shape[1] // self.heads
        self.groups = self.heads * self.head_dim // self.W_V.shape[0]
        self.pattern = rm.freezer.patterns[layer]  # [heads, P, P]
        self.attention_norm = _Norm(lm, block.get_submodule(lm.arch.attention_norm), scales[f"{layer}.attention"])
        self.mlp_norm = _Norm(lm, block.get_submodule(lm.arch.mlp_norm), scales[f"{layer}.mlp"])
        post_norm = lm.arch.attention_out_norm
        self.attention_out_norm = None  # Gemma normalizes the attention output before adding it
        if post_norm is not None:
            self.attention_out_norm = _Norm(lm, block.get_submodule(post_norm), scales[f"{layer}.attention_out"])
        self.skip = rm.transcoders.skip(layer)

    def skip_backward(self, grad: torch.Tensor, positions: int) -> None:
        """grad at resid_post → grad at resid_mid, in place: the residual plus the transcoder's skip."""
        if self.skip is not None:
            grad += self.mlp_norm.backward(grad @ self.skip, positions)

    def attention_backward(self, grad: torch.Tensor, positions: int) -> None:
        """grad at resid_mid → grad at resid_pre, in place: the residual plus value/output paths."""
        n = grad.shape[0]
        to_output = grad if self.attention_out_norm is None else self.attention_out_norm.backward(grad, positions)
        per_head = (to_output @ self.W_O).view(n, positions, self.heads, self.head_dim)
        pattern = self.pattern[:, :positions, :positions]
        to_values = torch.einsum("hqk,nqhe->nkhe", pattern, per_head)
        to_values = to_values.reshape(n, positions, -1, self.groups, self.head_dim).sum(3)
        grad += self.attention_norm.backward(to_values.reshape(n, positions, -1) @ self.W_V, positions)


@torch.no_grad()
def attribute(
    rm: ReplacementModel,
    logit_cumulative: float = 0.95,
    max_logits: int = 10,
    progress: bool = True,
    max_adjacency_gb: float | None = None,
) -> Graph:
    """The attribution graph of the traced prompt (see the module docstring). The adjacency is dense
    (nodes² floats): with `max_adjacency_gb`, a prompt that would need more fails before allocating it."""
    lm, features, tc = rm.lm, rm.features, rm.transcoders
    L, P = lm.n_layers, rm.n_positions
    dtype, device = rm.mlp_in.dtype, rm.mlp_in.device
    tokens, probabilities = logit_targets(rm.logits[-1], logit_cumulative, max_logits)
    n_f = len(features)
    error_start, token_start = n_f, n_f + L * P
    logit_start = token_start + P
    n_nodes = logit_start + len(tokens)
    needed_gb = n_nodes**2 * torch.finfo(dtype).bits / 8 / 1e9
    if max_adjacency_gb is not None and needed_gb > max_adjacency_gb:
        raise CircuitDBError(
            f"the prompt has {n_f} active features: its graph needs {needed_gb:.1f} GB "
            f"(limit {max_adjacency_gb} GB, attribution.max_adjacency_gb); shorten the prompt"
        )
    adjacency = torch.zeros(n_nodes, n_nodes, dtype=dtype, device=device)

    # targets: features read mlp_in of their layer; logits read the final residual at the last position
    target_layer = torch.cat([features.layer, torch.full((len(tokens),), L, device=device)])
    target_position = torch.cat([features.position, torch.full((len(tokens),), P - 1, device=device)])
    target_row = torch.arange(n_f + len(tokens), device=device)
    target_row[n_f:] += logit_start - n_f
    weights = [_Weights(rm, layer) for layer in range(L)]
    reads = torch.zeros(len(target_row), lm.d_model, dtype=dtype, device=device)
    for layer in tc.layers:
        mask = features.layer == layer
        if mask.any():
            rows, _ = tc.encoder(layer, features.index[mask])
            reads[:n_f][mask] = weights[layer].mlp_norm.read(rows, features.position[mask])
    unembedding = lm.model.get_submodule(lm.arch.unembedding).weight
    final_norm = _Norm(lm, lm.model.get_submodule(lm.arch.final_norm), rm.freezer.scales["final"])
    last = torch.full((len(tokens),), P - 1, device=device)
    reads[n_f:] = final_norm.read(unembedding[tokens] - unembedding.mean(0), last)  # demeaned: softmax ignores shifts

    # sources: what each feature writes into mlp_out of each layer, and the error vectors
    writes_at: list[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = [[] for _ in range(L)]
    for layer in tc.layers:
        mask = features.layer == layer
        columns = mask.nonzero().flatten()
        for target_layer_, rows in tc.writes(layer, features.index[mask]).items():
            vectors = rows * features.activation[mask, None]
            writes_at[target_layer_].append((columns, features.position[mask], vectors))
    for layer in range(L):
        writes_at[layer].append(
            (error_start + layer * P + torch.arange(P, device=device), torch.arange(P, device=device), rm.errors[layer])
        )

    groups = []
    for position in range(P):
        members = (target_position == position).nonzero().flatten()
        members = members[target_layer[members].argsort(descending=True, stable=True)]
        layers = target_layer[members]
        grad = torch.zeros(len(members), position + 1, lm.d_model, dtype=dtype, device=device)
        groups.append((position, members, layers, grad))

    def inject(layer: int) -> None:
        for position, members, layers, grad in groups:
            new = (layers == layer).nonzero().flatten()
            if len(new):
                grad[new, position] += reads[members[new]]

    def active(layers: torch.Tensor, layer: int) -> int:
        return int((layers >= layer).sum())

    inject(L)
    for layer in tqdm(range(L - 1, -1, -1), desc="attribution", unit="layer", disable=not progress, leave=False):
        sources = writes_at[layer]
        for position, members, layers, grad in groups:
            live = grad[: active(layers, layer + 1)]
            if not len(live):
                continue
            rows = target_row[members[: len(live)]]
            for columns, positions, vectors in sources:
                for source_position in positions.unique().tolist():
                    if source_position > position:
                        continue
                    pick = positions == source_position
                    adjacency[rows[:, None], columns[pick][None, :]] += live[:, source_position] @ vectors[pick].T
            weights[layer].skip_backward(live, position + 1)
        inject(layer)
        for position, _, layers, grad in groups:
            live = grad[: active(layers, layer)]
            if len(live):
                weights[layer].attention_backward(live, position + 1)

    embeddings = lm.model.get_submodule(lm.arch.embedding)(rm.ids.to(device))  # with Gemma's √d scale
    for position, members, _, grad in groups:
        if len(members):
            adjacency[target_row[members][:, None], token_start + torch.arange(position + 1, device=device)] = (
                torch.einsum("npd,pd->np", grad, embeddings[: position + 1])
            )

    return Graph(rm.ids.tolist(), features, L, tokens, probabilities, adjacency, n_f)


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
    return Graph(
        graph.ids,
        features,
        graph.n_layers,
        graph.logit_tokens,
        graph.logit_probabilities,
        adjacency,
        graph.n_active_features,
    )


def check_prompt(n_tokens: int, limit: int) -> None:
    if n_tokens <= 1:
        raise CircuitDBError("the prompt is empty")
    if n_tokens > limit:
        raise CircuitDBError(f"the prompt has {n_tokens} tokens; the limit is {limit} (attribution.max_prompt_tokens)")

"""Attribution: the `Graph` of a traced prompt, its direct effects computed exactly by one backward pass.

`adjacency[t, s]` is the direct effect of
source s on target t: s's write into the residual stream (activation × decoder row, the error vector,
or the token embedding) dotted with the gradient of t's pre-activation (or demeaned logit) with
respect to that residual, along frozen paths only — attention through its frozen pattern and value/
output projections, norms through their frozen 1/rms, transcoders through their linear skip, never
through another feature's nonlinearity. Logit targets are demeaned logits before any final soft-cap
(Gemma's tanh), as circuit-tracer's: the cap is left out rather than linearized, and the target
probabilities are the model's own (capped) ones.

How it is computed (exact, no sampling): one backward pass from the last layer down carries the
residual-stream gradient of every target at once. Targets are grouped by their position p and only
positions ≤ p are carried (attention is causal); a target joins the pass at its own layer. At each
layer the gradients are dotted with the writes of that layer's sources (one small matmul per source
position), then pushed through the skip and the attention's value/output path with three matmuls.
This is the same arithmetic as one backward pass per target, without the positions and layers where
that gradient is known to be zero: ~3.5x fewer multiply-adds than running every backward through the
whole model, and no autograd graph in memory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from tqdm.auto import tqdm

from circuitdb.attribution.graph import Graph
from circuitdb.attribution.pruning import keep_top_features, normalize_rows_
from circuitdb.attribution.replacement_model import Features, ReplacementModel, is_centred
from circuitdb.attribution.targets import TOP_LOGITS_TARGET, Targets, TargetSpec, resolve
from circuitdb.errors import CircuitDBError
from circuitdb.models import LoadedModel

MAX_LOGITS = 10
"""Target logits at most (the default of `max_logits`)."""
SELECTION_BATCH = 2048
"""Influence-first: features given rows between two rankings, circuit-tracer's schedule (its default
4 batches of 512 between updates), so a capped graph keeps the features circuit-tracer's keeps."""
SCRATCH_BYTES = 1 << 27
"""Influence-first computes a batch's rows in fp32 before keeping them in bf16: batches stay this small."""


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


class _BackwardPass:
    """The backward pass, for any set of targets: what it needs that does not depend on the targets.

    Source columns are laid out as the graph's nodes: active features, errors (layer × position), tokens.
    `rows` fills exact adjacency rows for the given targets into any output (the dense graph, a
    batch buffer, or the square graph of kept nodes), through a map from source columns to output
    columns in which -1 drops a column (and skips its arithmetic).
    """

    def __init__(self, rm: ReplacementModel, progress: bool) -> None:
        lm, features = rm.lm, rm.features
        self.rm, self.progress = rm, progress
        self.L, self.P, self.n_features = lm.n_layers, rm.n_positions, len(features)
        self.device = rm.mlp_in.device
        self.error_start, self.token_start = self.n_features, self.n_features + self.L * self.P
        self.n_columns = self.token_start + self.P
        self.weights = [_Weights(rm, layer) for layer in range(self.L)]
        self.embeddings = lm.model.get_submodule(lm.arch.embedding)(rm.ids.to(self.device))  # with Gemma's √d

    def writes(self, layer: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Sources writing into mlp_out of `layer` as (columns, positions, vectors [k, d]): the features'
        activation × decoder rows, and the layer's error vectors. Made when the pass reaches the layer (a
        long prompt's features would otherwise hold their vectors for every layer at once)."""
        features, tc = self.rm.features, self.rm.transcoders
        blocks = []
        for source in [s for s in tc.layers if s <= layer]:
            mask = features.layer == source
            rows = tc.writes(source, features.index[mask]).get(layer)
            if rows is not None:
                vectors = rows * features.activation[mask, None]
                blocks.append((mask.nonzero().flatten(), features.position[mask], vectors))
        positions = torch.arange(self.P, device=self.device)
        blocks.append((self.error_start + layer * self.P + positions, positions, self.rm.errors[layer]))
        return blocks

    def feature_reads(self, chosen: torch.Tensor) -> torch.Tensor:
        """What features `chosen` (indices into the active features) read: [k, d] gradients at their mlp_in."""
        features, tc = self.rm.features, self.rm.transcoders
        reads = torch.zeros(len(chosen), self.rm.lm.d_model, dtype=self.rm.mlp_in.dtype, device=self.device)
        layers = features.layer[chosen]
        for layer in layers.unique().tolist():
            mask = layers == layer
            rows, _ = tc.encoder(layer, features.index[chosen[mask]])
            reads[mask] = self.weights[layer].mlp_norm.read(rows, features.position[chosen[mask]])
        return reads

    def target_reads(self, targets: Targets) -> torch.Tensor:
        """The targets' vectors through the frozen norm they read after: [k, d] gradients at the residual."""
        lm = self.rm.lm
        where = torch.full((len(targets.ids),), targets.position, device=self.device)
        vectors = targets.vectors.to(self.device, self.rm.mlp_in.dtype)
        if targets.layer < self.L:
            return self.weights[targets.layer].mlp_norm.read(vectors, where)
        final_norm = _Norm(lm, lm.model.get_submodule(lm.arch.final_norm), self.rm.freezer.scales["final"])
        return final_norm.read(vectors, where)

    def rows(
        self,
        layers: torch.Tensor,
        positions: torch.Tensor,
        reads: torch.Tensor,
        out: torch.Tensor,
        out_rows: torch.Tensor,
        column_map: torch.Tensor | None = None,
        desc: str = "attribution",
    ) -> None:
        """Add the exact rows of targets (reading `reads` at `layers`/`positions`; logits at layer L) into
        `out[out_rows]`, source column c going to `out[:, column_map[c]]` (identity when None).

        Targets go through in chunks whose carried gradients ([targets, positions ≤ p, d]) stay within
        SCRATCH_BYTES · 2: a long prompt's thousands of targets would otherwise carry gigabytes."""
        cost = (positions + 1) * reads.shape[1] * reads.element_size()
        chunk = torch.div(cost.cumsum(0), 2 * SCRATCH_BYTES, rounding_mode="floor")
        if int(chunk[-1]) > 0:
            for part in chunk.unique().tolist():
                pick = (chunk == part).nonzero().flatten()
                self._rows(layers[pick], positions[pick], reads[pick], out, out_rows[pick], column_map, desc)
            return
        self._rows(layers, positions, reads, out, out_rows, column_map, desc)

    def _rows(self, layers, positions, reads, out, out_rows, column_map, desc) -> None:
        L, P, device = self.L, self.P, self.device
        groups = []
        for position in range(P):
            members = (positions == position).nonzero().flatten()
            members = members[layers[members].argsort(descending=True, stable=True)]
            grad = torch.zeros(len(members), position + 1, reads.shape[1], dtype=reads.dtype, device=device)
            groups.append((position, members, layers[members], grad))

        def inject(layer: int) -> None:
            for position, members, member_layers, grad in groups:
                new = (member_layers == layer).nonzero().flatten()
                if len(new):
                    grad[new, position] += reads[members[new]]

        def active(member_layers: torch.Tensor, layer: int) -> int:
            return int((member_layers >= layer).sum())

        inject(L)
        for layer in tqdm(range(L - 1, -1, -1), desc=desc, unit="layer", disable=not self.progress, leave=False):
            segments = self._segments(layer, column_map)
            for position, members, member_layers, grad in groups:
                live = grad[: active(member_layers, layer + 1)]
                if not len(live):
                    continue
                rows = out_rows[members[: len(live)]]
                for segment in segments:
                    if segment.position <= position:
                        segment.add_into(out, rows, live[:, segment.position] @ segment.vectors.T)
                self.weights[layer].skip_backward(live, position + 1)
            inject(layer)
            for position, _, member_layers, grad in groups:
                live = grad[: active(member_layers, layer)]
                if len(live):
                    self.weights[layer].attention_backward(live, position + 1)

        token_columns = self.token_start + torch.arange(P, device=device)
        if column_map is not None:
            token_columns = column_map[token_columns]
        for position, members, _, grad in groups:
            if len(members):
                out[out_rows[members][:, None], token_columns[: position + 1]] = torch.einsum(
                    "npd,pd->np", grad, self.embeddings[: position + 1]
                )

    def _segments(self, layer: int, column_map: torch.Tensor | None) -> list[_Segment]:
        """The sources writing into mlp_out of `layer`, a segment per (block, position), their columns mapped
        and the dropped ones (-1) left out."""
        segments = []
        for columns, positions, vectors in self.writes(layer):
            if column_map is not None:
                mapped = column_map[columns]
                keep = mapped >= 0
                columns, positions, vectors = mapped[keep], positions[keep], vectors[keep]
            values, counts = torch.unique_consecutive(positions, return_counts=True)
            start = 0
            for position, count in zip(values.tolist(), counts.tolist(), strict=True):
                part = slice(start, start + count)
                consecutive = bool((columns[part].diff() == 1).all())
                first = int(columns[start]) if consecutive else None
                segments.append(_Segment(position, columns[part], vectors[part], first))
                start += count
        return segments


class _Segment(NamedTuple):
    """Sources at one position writing into one layer: their output columns and write vectors [k, d].

    Features are ordered by (layer, position, index) and a column map keeps that order, so a segment's columns
    are nearly always consecutive: then its products are added row by row into that slice of the output, not
    element by element."""

    position: int
    columns: torch.Tensor
    vectors: torch.Tensor
    first: int | None
    """The first column when the columns are consecutive."""

    def add_into(self, out: torch.Tensor, rows: torch.Tensor, products: torch.Tensor) -> None:
        """out[rows, columns] += products [len(rows), len(columns)]."""
        if self.first is not None:
            out.narrow(1, self.first, len(self.columns)).index_add_(0, rows, products)
        else:
            out[rows[:, None], self.columns[None, :]] += products


def _estimated_gb(n_rows: int, n_columns: int, bytes_per_value: int) -> float:
    return n_rows * n_columns * bytes_per_value / 1e9


class MemoryEstimate(NamedTuple):
    n_features: int
    """Active features of the prompt."""
    n_positions: int
    """Prompt tokens, BOS included."""
    gb: float
    """Peak bytes of the graph's buffers (adjacency, pruning's copy, the selection buffers), in GB."""
    influence_first: bool
    """Whether rows are computed influence-first (the cap is below the active features, as circuit-tracer)."""
    rows_kept: bool = False
    """Influence-first: whether each chosen feature's exact row, computed once for the selection, is kept for the
    graph (it fits `memory_gb`); otherwise the kept graph's rows are computed again over the kept nodes only."""


def memory_estimate(
    n_features: int, n_layers: int, n_positions: int, max_feature_nodes: int | None, memory_gb: float | None
) -> MemoryEstimate:
    """What the graph will hold. Dense (every active feature's row) when the cap keeps every feature. Otherwise
    influence-first, as circuit-tracer: rows in batches of estimated influence until the cap, ranked through a
    bf16 copy of the normalized rows (an upper bound: a row only holds the features of earlier layers); the
    fp32 rows themselves are kept for the graph when they fit `memory_gb`, else the exact square graph of the
    kept nodes is computed again. Every way holds the square graph twice while pruning."""
    others = n_layers * n_positions + n_positions + MAX_LOGITS
    dense = 2 * _estimated_gb(n_features + others, n_features + others, 4)
    if max_feature_nodes is None or max_feature_nodes >= n_features:
        return MemoryEstimate(n_features, n_positions, dense, False)
    kept = max_feature_nodes + others
    square = 2 * _estimated_gb(kept, kept, 4)
    selection = _estimated_gb(max_feature_nodes + MAX_LOGITS, n_features, 2) + SCRATCH_BYTES / 1e9
    rows = _estimated_gb(max_feature_nodes + MAX_LOGITS, n_features + others, 4)
    with_rows = max(selection + rows, rows + square / 2, square)  # the buffer lives until the square is filled
    if memory_gb is None or with_rows <= memory_gb:
        return MemoryEstimate(n_features, n_positions, with_rows, True, True)
    return MemoryEstimate(n_features, n_positions, max(selection, square), True)


@torch.no_grad()
def attribute(
    rm: ReplacementModel,
    logit_cumulative: float = 0.95,
    max_logits: int = MAX_LOGITS,
    progress: bool = True,
    target: TargetSpec = TOP_LOGITS_TARGET,
    max_feature_nodes: int | None = None,
    memory_gb: float | None = None,
    influence_first: bool | None = None,
    batch_size: int = SELECTION_BATCH,
    report: Callable[[MemoryEstimate], None] | None = None,
) -> Graph:
    """The attribution graph of the traced prompt (see the module docstring), with at most
    `max_feature_nodes` features as nodes, chosen by influence on the logits.

    Dense when the cap keeps every active feature (each gets its exact row). Otherwise influence-first, as
    circuit-tracer: logit rows, then feature rows in batches, each batch the features of highest influence
    estimated from the rows so far, until the cap (`batch_size` features between two rankings). The rows are
    exact: kept for the graph when they fit `memory_gb`, else computed once more over the kept nodes only.
    Features never given a row are left out of the graph with their edges, as circuit-tracer's are.
    `influence_first` forces one way (tests: dense then keeps the most influential by exact influence).
    `report` hears the memory estimate before anything is allocated; past `memory_gb`, one clear error instead.
    `target` says what the graph explains (the top logits unless asked otherwise: `targets.py`).
    """
    lm, features = rm.lm, rm.features
    L, P, n_f = lm.n_layers, rm.n_positions, len(features)
    estimate = memory_estimate(n_f, L, P, max_feature_nodes, memory_gb)
    if influence_first is not None:
        estimate = estimate._replace(influence_first=influence_first)
    if report is not None:
        report(estimate)
    if memory_gb is not None and estimate.gb > memory_gb:
        raise CircuitDBError(
            f"the prompt has {n_f} active features: its graph needs ~{estimate.gb:.2g} GB (limit {memory_gb} GB, "
            "attribution.memory_gb); lower --max-feature-nodes or shorten the prompt"
        )
    targets = resolve(lm, rm.logits, rm.transcoders, target, logit_cumulative, max_logits)
    backward = _BackwardPass(rm, progress)
    if not estimate.influence_first:
        every = torch.arange(n_f, device=backward.device)
        return keep_top_features(_kept_graph(backward, targets, every), max_feature_nodes)
    capacity = min(max_feature_nodes or n_f, n_f)
    kept_rows = _KeptRows(backward, len(targets.ids), capacity) if estimate.rows_kept else None
    chosen = _choose_features(backward, targets, capacity, batch_size, kept_rows)
    if kept_rows is not None:
        return _graph(backward, targets, chosen, kept_rows.square(chosen))
    return _kept_graph(backward, targets, chosen)


class _SelectionRows:
    """The normalized |A| rows computed so far, as bf16 (the selection only ranks with them), each over the
    feature columns it can have.

    A feature of layer l reads mlp_in of l, which only features of earlier layers write; features are
    ordered by layer, so its row's feature columns are the prefix [0, start of layer l) and the rest are
    exact zeros. Rows are kept per layer at that width (logit rows: every feature), which roughly halves
    the buffer when the chosen features spread over the layers.
    """

    def __init__(self, features: Features, n_layers: int) -> None:
        self.n_features = len(features)
        layers = torch.arange(n_layers + 1, device=features.layer.device)
        self.width = torch.searchsorted(features.layer, layers).tolist()  # layer L (logits): every feature
        self.width[n_layers] = self.n_features
        self.blocks: dict[int, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {}

    def add(self, normalized: torch.Tensor, layers: torch.Tensor, columns: torch.Tensor, weights: torch.Tensor) -> None:
        """Rows [k, ≥ n_features] of targets at `layers` (n_layers for logits) with their own feature
        `columns` (-1 for logits) and fixed `weights` (the logits' probabilities; zeros for features)."""
        for layer in layers.unique().tolist():
            pick = (layers == layer).nonzero().flatten()
            rows = normalized[pick, : self.width[layer]].bfloat16()
            self.blocks.setdefault(layer, []).append((rows, columns[pick], weights[pick]))

    def influence(self) -> torch.Tensor:
        """Influence on the logits of every feature column through these rows: the power series of the
        normalized |A|, solved in one pass from the last layer down (a feature's influence is complete once
        every later layer's rows have spread theirs, since its own layer's rows cannot reach it)."""
        total = torch.zeros(self.n_features, device=self._device())
        for layer in sorted(self.blocks, reverse=True):
            for rows, columns, weights in self.blocks[layer]:
                row_weight = torch.where(columns >= 0, total[columns.clamp_min(0)], weights)
                total[: rows.shape[1]] += _times(row_weight, rows)
        return total

    def _device(self) -> torch.device:
        return next(iter(self.blocks.values()))[0][0].device


def _times(vector: torch.Tensor, matrix: torch.Tensor, rows_per_chunk: int = 128) -> torch.Tensor:
    """vector @ matrix for a bf16 matrix, in fp32, a chunk of rows at a time (no fp32 copy of the matrix)."""
    out = torch.zeros(matrix.shape[1], device=matrix.device)
    for start in range(0, matrix.shape[0], rows_per_chunk):
        weights = vector[start : start + rows_per_chunk]
        if weights.any():
            out += weights @ matrix[start : start + rows_per_chunk].float()
    return out


class _KeptRows:
    """Influence-first with room for them: the exact rows the selection computes, over every source column, kept
    in the order computed (the targets' first), so the graph needs no second pass over the kept nodes."""

    def __init__(self, backward: _BackwardPass, n_targets: int, capacity: int) -> None:
        self.backward, self.n_targets, self.filled = backward, n_targets, 0
        dtype, device = backward.rm.mlp_in.dtype, backward.device
        self.rows = torch.zeros(n_targets + capacity, backward.n_columns, dtype=dtype, device=device)
        self.where = torch.full((backward.n_features,), -1, dtype=torch.long, device=device)  # feature → its row

    def next_rows(self, columns: torch.Tensor) -> torch.Tensor:
        """The buffer's next rows (a view to compute into) for targets whose feature `columns` are given (-1:
        a logit)."""
        rows = self.rows[self.filled : self.filled + len(columns)]
        features = (columns >= 0).nonzero().flatten()
        self.where[columns[features]] = self.filled + features
        self.filled += len(columns)
        return rows

    def square(self, chosen: torch.Tensor) -> torch.Tensor:
        """The graph's adjacency: rows of the chosen features and the targets, over the chosen features' columns,
        errors and tokens (a block of rows at a time: no copy of the whole buffer)."""
        backward = self.backward
        others = torch.arange(backward.error_start, backward.n_columns, device=backward.device)
        columns = torch.cat([chosen, others])
        n_kept, n_sources = len(chosen), len(columns)
        adjacency = torch.zeros(n_sources + self.n_targets, n_sources + self.n_targets, dtype=self.rows.dtype)
        adjacency = adjacency.to(backward.device)
        sources = torch.cat([self.where[chosen], torch.arange(self.n_targets, device=backward.device)])
        out_rows = torch.arange(n_kept + self.n_targets, device=backward.device)
        out_rows[n_kept:] += len(others)
        for start in range(0, len(sources), 1024):
            part = slice(start, start + 1024)
            adjacency[out_rows[part], :n_sources] = self.rows[sources[part]][:, columns]
        return adjacency


def _choose_features(
    backward: _BackwardPass, targets: Targets, capacity: int, batch_size: int, kept: _KeptRows | None
) -> torch.Tensor:
    """Influence-first: the features to keep, in batches of the highest estimated influence so far. A batch's
    rows are computed in blocks whose fp32 rows over every source stay within SCRATCH_BYTES, or straight into
    `kept`."""
    rm, device, n_f = backward.rm, backward.device, backward.n_features
    f = rm.features
    selection = _SelectionRows(f, backward.L)
    block_rows = max(1, SCRATCH_BYTES // (4 * backward.n_columns))

    def add_rows(layers: torch.Tensor, positions: torch.Tensor, reads: torch.Tensor, columns, weights, desc) -> None:
        for start in range(0, len(reads), block_rows):
            part = slice(start, start + block_rows)
            if kept is not None:
                block = kept.next_rows(columns[part])
            else:
                block = torch.zeros(len(reads[part]), backward.n_columns, dtype=reads.dtype, device=device)
            out_rows = torch.arange(len(block), device=device)
            backward.rows(layers[part], positions[part], reads[part], block, out_rows, desc=desc)
            magnitudes = block.abs() if kept is not None else block.abs_()
            selection.add(normalize_rows_(magnitudes), layers[part], columns[part], weights[part])

    n_targets = len(targets.ids)
    layers = torch.full((n_targets,), targets.layer, device=device)
    where = torch.full((n_targets,), targets.position, device=device)
    no_column = torch.full((n_targets,), -1, device=device)
    weights = targets.weights.to(device)
    add_rows(layers, where, backward.target_reads(targets), no_column, weights, "target rows")
    chosen = torch.zeros(n_f, dtype=torch.bool, device=device)
    bar = tqdm(total=capacity, desc="feature rows", unit="row", disable=not backward.progress, leave=False)
    done = 0
    while done < capacity:
        influence = selection.influence()
        influence[chosen] = -1.0
        values, batch = influence.topk(min(batch_size, capacity - done))
        batch = batch[values > 0]
        if not len(batch):
            break  # no influence reaches the remaining features
        batch = batch.sort().values
        zeros = torch.zeros(len(batch), device=device)
        add_rows(f.layer[batch], f.position[batch], backward.feature_reads(batch), batch, zeros, "batch rows")
        chosen[batch] = True
        done += len(batch)
        bar.update(len(batch))
    bar.close()
    return chosen.nonzero().flatten()


def _kept_graph(backward: _BackwardPass, targets: Targets, chosen: torch.Tensor) -> Graph:
    """The exact square graph of the chosen features (all of them: the dense graph), errors, tokens and
    targets, computed over those columns only; other features are dropped with their edges."""
    rm, device = backward.rm, backward.device
    f = rm.features
    n_kept = len(chosen)
    others = torch.arange(backward.error_start, backward.n_columns, device=device)
    column_map = None  # every feature kept: columns stay where they are
    if n_kept < backward.n_features:
        column_map = torch.full((backward.n_columns,), -1, dtype=torch.long, device=device)
        column_map[chosen] = torch.arange(n_kept, device=device)
        column_map[others] = n_kept + torch.arange(len(others), device=device)
    n_targets = len(targets.ids)
    n_nodes = n_kept + len(others) + n_targets
    adjacency = torch.zeros(n_nodes, n_nodes, dtype=rm.mlp_in.dtype, device=device)
    layers = torch.cat([f.layer[chosen], torch.full((n_targets,), targets.layer, device=device)])
    positions = torch.cat([f.position[chosen], torch.full((n_targets,), targets.position, device=device)])
    reads = torch.cat([backward.feature_reads(chosen), backward.target_reads(targets)])
    out_rows = torch.arange(n_kept + n_targets, device=device)
    out_rows[n_kept:] += len(others)
    backward.rows(layers, positions, reads, adjacency, out_rows, column_map, desc="exact rows")
    return _graph(backward, targets, chosen, adjacency)


def _graph(backward: _BackwardPass, targets: Targets, chosen: torch.Tensor, adjacency: torch.Tensor) -> Graph:
    """The `Graph` of the chosen features (indices into the active ones, ascending) over `adjacency`."""
    f = backward.rm.features
    kept = Features(f.layer[chosen], f.position[chosen], f.index[chosen], f.activation[chosen])
    return Graph(
        backward.rm.ids.tolist(),
        kept,
        backward.L,
        targets.ids,
        targets.weights,
        adjacency,
        backward.n_features,
        targets.description,
        targets.labels,
        targets.layer,
        targets.position,
    )


def check_prompt(n_tokens: int, limit: int) -> None:
    if n_tokens <= 1:
        raise CircuitDBError("the prompt is empty")
    if n_tokens > limit:
        raise CircuitDBError(f"the prompt has {n_tokens} tokens; the limit is {limit} (attribution.max_prompt_tokens)")

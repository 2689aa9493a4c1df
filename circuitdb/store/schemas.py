"""Schemas of every table in the store: column, type and what it means.

The Parquet writer checks frames against these before writing, and `circuitdb tables` prints
them, so this file is the documentation of the store.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from circuitdb.errors import CircuitDBError


@dataclass(frozen=True)
class TableSchema:
    description: str
    """What one row is."""
    columns: dict[str, tuple[pl.DataType, str]]
    """Column name → (polars dtype, meaning)."""
    filled_later: frozenset[str] = frozenset()
    """Columns a later stage fills in (null until then): writers may leave them out, and partitions written
    before such a column existed read it as null."""


EXPLANATION_SUMMARY: dict[str, tuple[pl.DataType, str]] = {
    "explained_features": (pl.Int64(), "features explained and scored (null: none)"),
    "detection_acc": (pl.Float64(), "their mean detection accuracy (chance 0.5)"),
    "fuzzing_acc": (pl.Float64(), "their mean fuzzing accuracy (chance 0.5)"),
}
"""How well a dictionary's features are explained, as `dictionaries` rows and `sweeps` points record it."""

TABLES: dict[str, TableSchema] = {
    "corpora": TableSchema(
        "one row per tokenized corpus",
        {
            "corpus": (pl.String(), "corpus name (config corpus.name)"),
            "source": (pl.String(), "where the text came from"),
            "model": (pl.String(), "model whose tokenizer made the blocks"),
            "context": (pl.Int32(), "tokens per block, BOS included"),
            "n_documents": (pl.Int64(), "documents read"),
            "n_blocks": (pl.Int64(), "blocks in total"),
            "n_train_blocks": (pl.Int64(), "blocks in the train split"),
            "n_eval_blocks": (pl.Int64(), "blocks held out for evaluation"),
            "n_tokens": (pl.Int64(), "n_blocks × context"),
            "tokens_sha256": (pl.String(), "fingerprint of the token ids"),
            "seed": (pl.Int64(), "seed of the train/eval split"),
            "created_at": (pl.Datetime("us", "UTC"), "when the corpus was built"),
        },
    ),
    "corpus_blocks": TableSchema(
        "one row per token block",
        {
            "corpus": (pl.String(), "corpus name"),
            "block": (pl.Int64(), "block index in corpus order"),
            "split": (pl.String(), "'train' or 'eval'"),
            "token_ids": (pl.List(pl.Int32()), "token ids, BOS first"),
        },
    ),
    "activation_shards": TableSchema(
        "the activation manifest: one row per stored shard of one hook point",
        {
            "run": (pl.String(), "activation run: <corpus>-<split>"),
            "corpus": (pl.String(), "corpus name"),
            "split": (pl.String(), "'train' or 'eval'"),
            "model": (pl.String(), "model that produced the activations"),
            "hook": (pl.String(), "hook point, e.g. mlp_in.3"),
            "layer": (pl.Int32(), "layer of the hook point"),
            "shard": (pl.Int32(), "shard index within the run and hook"),
            "first_block": (pl.Int64(), "index of the shard's first block within the split"),
            "n_sequences": (pl.Int64(), "blocks in the shard"),
            "n_tokens": (pl.Int64(), "tokens in the shard"),
            "d": (pl.Int32(), "activation width"),
            "dtype": (pl.String(), "storage dtype"),
            "path": (pl.String(), "shard file, relative to the store"),
            "sha256": (pl.String(), "checksum of the shard file"),
        },
    ),
    "dictionaries": TableSchema(
        "one row per trained dictionary (one layer of a dictionary set), with its held-out metrics",
        {
            "name": (pl.String(), "dictionary set name (config dictionaries.name)"),
            "layer": (pl.Int32(), "layer the dictionary reads"),
            "kind": (pl.String(), "sae, plt (per-layer transcoder) or clt (cross-layer transcoder)"),
            "activation": (pl.String(), "topk, batchtopk, jumprelu or relu"),
            "input_hook": (pl.String(), "hook point read, e.g. mlp_in.3"),
            "target_hook": (pl.String(), "hook point reconstructed, e.g. mlp_out.3"),
            "model": (pl.String(), "model the activations came from"),
            "corpus": (pl.String(), "corpus the activations came from"),
            "n_latents": (pl.Int32(), "dictionary width"),
            "k": (pl.Int32(), "active latents per token (topk/batchtopk)"),
            "train_tokens": (pl.Int64(), "tokens trained on (all epochs)"),
            "train_seconds": (pl.Float64(), "wall time of training"),
            "fvu": (pl.Float64(), "fraction of variance unexplained on held-out tokens, all positions"),
            "fvu_excl_pos0": (pl.Float64(), "FVU excluding position 0 (BOS)"),
            "l0": (pl.Float64(), "mean active latents per held-out token"),
            "dead_frac": (pl.Float64(), "share of latents never active on the held-out tokens"),
            "delta_ce": (pl.Float64(), "next-token CE increase with the reconstruction spliced in (nats)"),
            "kl": (pl.Float64(), "KL(clean || spliced) per predicted token (nats)"),
            "n_eval_tokens": (pl.Int64(), "held-out tokens behind the reconstruction metrics"),
            "fvu_curve": (pl.List(pl.Float64()), "training FVU every 10 steps"),
            "path": (pl.String(), "dictionary folder, relative to the store"),
            "created_at": (pl.Datetime("us", "UTC"), "when it was trained"),
            **{name: EXPLANATION_SUMMARY[name] for name in ("explained_features", "detection_acc", "fuzzing_acc")},
            "scored_by": (pl.String(), "explainer → scorer of that summary (the last pair that scored this layer)"),
        },
        filled_later=frozenset({"explained_features", "detection_acc", "fuzzing_acc", "scored_by"}),
    ),
    "features": TableSchema(
        "one row per latent of a dictionary: statistics, output logits, neighbours and a label",
        {
            "feature_id": (pl.String(), "<dictionary>/<layer>/<index>"),
            "dictionary": (pl.String(), "dictionary set name"),
            "layer": (pl.Int32(), "layer of the dictionary"),
            "index": (pl.Int32(), "latent index"),
            "density": (pl.Float64(), "share of tokens (positions >= 1) on which it is active"),
            "max_act": (pl.Float32(), "highest activation seen"),
            "mean_act": (pl.Float32(), "mean activation where active"),
            "dead": (pl.Boolean(), "never active on the tokens seen (kept, flagged)"),
            "histogram": (pl.List(pl.Int64()), "counts of active tokens in equal bins over (0, max_act]"),
            "top_logits": (
                pl.List(pl.String()),
                "tokens its decoder row promotes most (final norm gain, then unembedding)",
            ),
            "top_logit_values": (pl.List(pl.Float32()), "their logit contributions"),
            "bottom_logits": (pl.List(pl.String()), "tokens it suppresses most"),
            "bottom_logit_values": (pl.List(pl.Float32()), "their logit contributions"),
            "neighbours": (pl.List(pl.String()), "feature ids with the most similar decoder rows"),
            "neighbour_cosines": (pl.List(pl.Float32()), "their decoder cosines"),
            "label": (pl.String(), "automatic label: the token it fires hardest on → tokens it promotes"),
        },
    ),
    "exemplars": TableSchema(
        "one row per exemplar context of a feature",
        {
            "feature_id": (pl.String(), "<dictionary>/<layer>/<index>"),
            "kind": (pl.String(), "'top' (highest activations) or 'quantile' (sampled within an activation range)"),
            "group": (pl.Int64(), "0 for top; 1..n quantile group, low to high activation"),
            "rank": (pl.Int64(), "order within the kind/group, best first"),
            "block": (pl.Int64(), "train block of the corpus"),
            "position": (pl.Int64(), "position of the peak token in the block"),
            "activation": (pl.Float32(), "activation at the peak token"),
            "peak_offset": (pl.Int64(), "index of the peak token within the window"),
            "tokens": (pl.List(pl.String()), "the window's tokens as text"),
            "values": (pl.List(pl.Float32()), "the feature's activation on each token of the window"),
        },
    ),
    "graphs": TableSchema(
        "one row per attribution graph (one prompt, one set of transcoders)",
        {
            "slug": (pl.String(), "graph id: prompt words + a hash of prompt, model, transcoders and target"),
            "prompt": (pl.String(), "the prompt as given"),
            "tokens": (pl.List(pl.String()), "prompt tokens as text, BOS first"),
            "token_ids": (pl.List(pl.Int32()), "prompt token ids, BOS first"),
            "model": (pl.String(), "model spec"),
            "dictionaries": (pl.String(), "transcoder set: a store name or a folder"),
            "n_active_features": (pl.Int64(), "active features before max_feature_nodes"),
            "n_nodes": (pl.Int64(), "nodes before pruning"),
            "n_nodes_pruned": (pl.Int64(), "nodes kept by pruning"),
            "n_edges_pruned": (pl.Int64(), "edges kept by pruning"),
            "replacement_score": (pl.Float64(), "share of the logits' influence starting at tokens, not errors"),
            "completeness_score": (pl.Float64(), "influence-weighted share of node inputs not from errors"),
            "target": (
                pl.String(),
                "what the graph explains: '' (or null, before targets existed) the top logits; 'tokens ...', "
                "'difference ...', 'vector ...', 'feature ...'",
            ),
            "top_logits": (pl.List(pl.String()), "target logits, most probable first (or the targets' labels)"),
            "top_probabilities": (pl.List(pl.Float32()), "their probabilities"),
            "settings": (pl.String(), "JSON: thresholds and limits used"),
            "seconds": (pl.Float64(), "time to trace, attribute and prune"),
            "created_at": (pl.Datetime("us", "UTC"), "when the graph was built"),
        },
        filled_later=frozenset({"target"}),
    ),
    "graph_nodes": TableSchema(
        "one row per node kept by pruning",
        {
            "slug": (pl.String(), "graph id"),
            "node_id": (
                pl.String(),
                "node id: <layer>_<index>_<pos>, err_<layer>_<pos>, E_<token>_<pos>, <L+1>_<token>_<pos>",
            ),
            "kind": (pl.String(), "'feature', 'error', 'token' or 'logit'"),
            "feature_id": (pl.String(), "<dictionary>/<layer>/<index> for features, else null"),
            "layer": (pl.Int32(), "layer (features, errors); -1 tokens; n_layers logits"),
            "position": (pl.Int32(), "prompt position"),
            "index": (pl.Int64(), "latent index (features) or token id (tokens, logits)"),
            "token": (pl.String(), "the token at this position, or the logit's token"),
            "activation": (pl.Float32(), "feature activation; logit probability for logits"),
            "influence": (pl.Float32(), "influence on the logits (unpruned graph)"),
            "label": (pl.String(), "feature label from the feature database, or a description"),
        },
    ),
    "graph_edges": TableSchema(
        "one row per edge kept by pruning: the direct effect of source on target",
        {
            "slug": (pl.String(), "graph id"),
            "source": (pl.String(), "node_id of the source"),
            "target": (pl.String(), "node_id of the target"),
            "weight": (pl.Float32(), "direct effect on the target's pre-activation (or demeaned logit)"),
        },
    ),
    "sweeps": TableSchema(
        "one row per point of a sparsity sweep: the recipe trained at one k and seed on one layer",
        {
            "dictionary": (pl.String(), "dictionary set whose recipe was swept"),
            "layer": (pl.Int32(), "layer trained on"),
            "kind": (pl.String(), "'sae', 'plt' or 'clt'"),
            "skip": (pl.Boolean(), "linear skip connection (skip transcoder)"),
            "n_latents": (pl.Int64(), "dictionary width"),
            "k": (pl.Int64(), "active latents per token"),
            "seed": (pl.Int64(), "seed of initialization and data order"),
            "fvu": (pl.Float64(), "held-out fraction of variance unexplained"),
            "fvu_excl_pos0": (pl.Float64(), "the same without position 0"),
            "l0": (pl.Float64(), "mean active latents per held-out token"),
            "dead_frac": (pl.Float64(), "share of latents never active on the held-out split"),
            "delta_ce": (pl.Float64(), "next-token loss increase with the dictionary spliced in"),
            "kl": (pl.Float64(), "KL of the spliced model from the original"),
            **EXPLANATION_SUMMARY,
            "created_at": (pl.Datetime("us", "UTC"), "when the point was trained"),
        },
        filled_later=frozenset(EXPLANATION_SUMMARY),
    ),
    "explanations": TableSchema(
        "one row per feature and explainer: a one-line natural-language explanation written from its exemplars",
        {
            "feature_id": (pl.String(), "<dictionary>/<layer>/<index>"),
            "dictionary": (pl.String(), "dictionary set name"),
            "layer": (pl.Int32(), "layer of the dictionary"),
            "index": (pl.Int32(), "latent index"),
            "explanation": (pl.String(), "what the explainer says the feature detects"),
            "explainer": (pl.String(), "model spec or endpoint that wrote it"),
            "prompt_version": (pl.String(), "version of the explanation prompt"),
            "created_at": (pl.Datetime("us", "UTC"), "when it was written"),
        },
    ),
    "explanation_scores": TableSchema(
        "one row per feature, explainer and scoring method: how well a scorer predicts the feature from its "
        "explanation on held-out contexts (delphi's detection and fuzzing)",
        {
            "feature_id": (pl.String(), "<dictionary>/<layer>/<index>"),
            "dictionary": (pl.String(), "dictionary set name"),
            "layer": (pl.Int32(), "layer of the dictionary"),
            "explainer": (pl.String(), "who wrote the explanation scored"),
            "scorer": (pl.String(), "model spec or endpoint that judged"),
            "method": (pl.String(), "'detection' or 'fuzzing'"),
            "accuracy": (pl.Float64(), "share of contexts judged right (chance 0.5)"),
            "precision": (pl.Float64(), "of the contexts judged positive, the share that are"),
            "recall": (pl.Float64(), "of the positive contexts, the share judged so"),
            "f1": (pl.Float64(), "harmonic mean of precision and recall"),
            "n": (pl.Int64(), "contexts judged"),
            "seed": (pl.Int64(), "seed of the balanced draw"),
            "created_at": (pl.Datetime("us", "UTC"), "when it was scored"),
        },
    ),
    "graph_annotations": TableSchema(
        "one row per supernode or pinned subgraph saved for a graph (viewer or `graph supernode`), one partition each",
        {
            "slug": (pl.String(), "graph id"),
            "name": (pl.String(), "the supernode's name"),
            "node_ids": (pl.List(pl.String()), "the nodes grouped under it"),
            "created_at": (pl.Datetime("us", "UTC"), "when it was saved"),
            "kind": (pl.String(), "'supernode' (null before kinds existed) or 'pins' (a pinned subgraph)"),
            "deleted": (pl.Boolean(), "true: this name was deleted (the row replaces what was saved under it)"),
            "source": (pl.String(), "'auto' for an automatic supernode (`graph supernodes --auto`); null: by hand"),
            "parameters": (pl.String(), "automatic: the grouping and validation settings, JSON"),
            "effect": (pl.Float64(), "automatic: change of the target's logit when the group is zeroed"),
            "control": (pl.Float64(), "automatic: mean |change| for random groups of the same layers and position"),
            "control_ci95": (pl.Float64(), "automatic: half-width of its 95% interval"),
            "interchangeability": (
                pl.Float64(),
                "automatic: share of the effect one member carrying the group's write undoes",
            ),
        },
        filled_later=frozenset(
            {"kind", "deleted", "source", "parameters", "effect", "control", "control_ci95", "interchangeability"}
        ),
    ),
    "graph_diffs": TableSchema(
        "one row per node of either of two graphs of one prompt (`graph diff A B`), one partition per diff 'A~B'",
        {
            "diff": (pl.String(), "'<slug A>~<slug B>'"),
            "node_a": (pl.String(), "the node in A (null: only in B)"),
            "node_b": (pl.String(), "its match in B (null: only in A)"),
            "kind": (pl.String(), "feature, error, token or logit"),
            "feature_a": (pl.String(), "A's feature id (features)"),
            "feature_b": (pl.String(), "B's feature id (features)"),
            "layer": (pl.Int32(), "layer of the node (A's when matched)"),
            "position": (pl.Int32(), "token position"),
            "token": (pl.String(), "the token at that position (a logit's token)"),
            "match": (
                pl.String(),
                "identity, decoder (cosine) or label (word overlap); null: unique",
            ),
            "score": (pl.Float64(), "the match's score: 1 for identity, the decoder cosine, or the label overlap"),
            "influence_a": (pl.Float64(), "the node's influence on A's logits"),
            "influence_b": (pl.Float64(), "its match's influence on B's logits"),
            "label_a": (pl.String(), "A's label"),
            "label_b": (pl.String(), "B's label"),
            "activation_correlation": (
                pl.Float64(),
                "decoder matches: activation correlation over positions",
            ),
        },
    ),
    "graph_diff_edges": TableSchema(
        "one row per edge between matched nodes in either of two graphs, with its weight in each",
        {
            "diff": (pl.String(), "'<slug A>~<slug B>'"),
            "source_a": (pl.String(), "source node in A"),
            "target_a": (pl.String(), "target node in A"),
            "source_b": (pl.String(), "the matched source in B"),
            "target_b": (pl.String(), "the matched target in B"),
            "weight_a": (pl.Float64(), "the edge's weight in A (null: absent after pruning)"),
            "weight_b": (pl.Float64(), "its weight in B (null: absent after pruning)"),
            "change": (pl.Float64(), "weight_b - weight_a (absent: 0)"),
        },
    ),
    "prompt_sets": TableSchema(
        "one row per prompt of a named prompt set (a behaviour studied over many prompts), one partition per set",
        {
            "prompt_set": (pl.String(), "the set's name"),
            "position": (pl.Int32(), "the prompt's place in the set's file (from 0)"),
            "prompt": (pl.String(), "the prompt"),
            "target": (pl.String(), "the token its graph explains, as `graph build --target` ('': the top logits)"),
            "tags": (pl.List(pl.String()), "the file's tags for the prompt"),
            "slug": (pl.String(), "its graph once built (null: not yet)"),
            "created_at": (pl.Datetime("us", "UTC"), "when the set was defined"),
        },
    ),
    "circuit_features": TableSchema(
        "one row per (prompt set, feature): how a feature recurs in the set's graphs; one partition per set",
        {
            "prompt_set": (pl.String(), "the set"),
            "feature_id": (pl.String(), "<dictionary>/<layer>/<index>"),
            "layer": (pl.Int32(), "its layer"),
            "graphs": (pl.Int64(), "graphs (prompts) whose pruned graph holds it"),
            "graph_share": (pl.Float64(), "graphs / the set's graphs"),
            "mean_influence": (
                pl.Float64(),
                "mean over those graphs of its influence on the targets (summed over positions)",
            ),
            "max_influence": (pl.Float64(), "the largest of them"),
            "mean_activation": (pl.Float64(), "mean over those graphs of its largest activation"),
            "target_share": (pl.Float64(), "mean over those graphs of its share of all nodes' influence"),
            "positions_from_end": (pl.List(pl.Int32()), "positions it appears at, counted back from the last (0)"),
            "label": (pl.String(), "its label or explanation"),
        },
    ),
    "circuit_edges": TableSchema(
        "one row per (prompt set, source, target) of the set's pruned graphs, nodes named across prompts",
        {
            "prompt_set": (pl.String(), "the set"),
            "source": (pl.String(), "a feature_id, 'error <layer>' or 'token '<text>''"),
            "target": (pl.String(), "a feature_id or 'target' (the graph's logits)"),
            "graphs": (pl.Int64(), "graphs holding such an edge"),
            "mean_weight": (pl.Float64(), "mean over those graphs of its weight (summed over positions)"),
            "sum_weight": (pl.Float64(), "the sum over the graphs"),
            "sign_agreement": (pl.Float64(), "share of those graphs whose weight has the majority's sign"),
        },
    ),
    "circuit_sets": TableSchema(
        "one row per aggregated prompt set: how many graphs, and their mean scores with 95% intervals",
        {
            "prompt_set": (pl.String(), "the set"),
            "prompts": (pl.Int64(), "prompts in the set"),
            "graphs": (pl.Int64(), "prompts whose graph is built"),
            "replacement": (pl.Float64(), "mean replacement score of the graphs"),
            "replacement_ci95": (pl.Float64(), "half-width of its 95% interval (Student's t)"),
            "completeness": (pl.Float64(), "mean completeness score"),
            "completeness_ci95": (pl.Float64(), "half-width of its 95% interval"),
            "created_at": (pl.Datetime("us", "UTC"), "when it was aggregated"),
        },
    ),
    "circuit_supernodes": TableSchema(
        "one row per automatic supernode of a prompt set that passed validation over its prompts "
        "(`circuit supernodes`), one partition per set",
        {
            "prompt_set": (pl.String(), "the set"),
            "name": (pl.String(), "'auto: <shared label words> @<token> L<lo>-<hi>'"),
            "feature_ids": (pl.List(pl.String()), "its members"),
            "position_from_end": (pl.Int32(), "where they act, counted back from the prompt's last token (0)"),
            "layer_lo": (pl.Int32(), "lowest member layer"),
            "layer_hi": (pl.Int32(), "highest member layer"),
            "prompts": (pl.Int64(), "prompts it was validated on"),
            "effect": (pl.Float64(), "mean change of the target's logit with the group zeroed"),
            "effect_ci95": (pl.Float64(), "half-width of its 95% interval over the prompts"),
            "control": (pl.Float64(), "mean |change| for random groups of the same size, layers and position"),
            "control_ci95": (pl.Float64(), "half-width of its 95% interval over the prompts"),
            "interchangeability": (
                pl.Float64(),
                "mean share of the effect one member carrying the group's write undoes",
            ),
            "parameters": (pl.String(), "selection, grouping and validation settings, JSON"),
            "created_at": (pl.Datetime("us", "UTC"), "when it was validated"),
        },
    ),
    "circuit_diffs": TableSchema(
        "one row per feature of either side of one prompt set's graphs under two dictionary sets or models "
        "(`circuit diff A B`): how often it recurs and is matched on the other side; one partition per 'A~B'",
        {
            "diff": (pl.String(), "'<set A>~<set B>'"),
            "side": (pl.String(), "'a' or 'b': the set whose graphs hold the feature"),
            "feature_id": (pl.String(), "the feature"),
            "layer": (pl.Int32(), "its layer"),
            "graphs": (pl.Int64(), "that side's graphs (prompts) holding it"),
            "matched": (pl.Int64(), "of those, graphs where it has a match in the other side's graph"),
            "unmatched": (pl.Int64(), "graphs - matched: how often the other side has nothing like it"),
            "match": (pl.String(), "its most frequent match on the other side"),
            "mean_score": (pl.Float64(), "mean match score where matched (decoder cosine, label overlap, 1)"),
            "mean_influence": (pl.Float64(), "its mean influence on the target in those graphs"),
        },
    ),
    "circuit_diff_paths": TableSchema(
        "one row per top path into the target recurring on one side of a set diff (nodes named across prompts)",
        {
            "diff": (pl.String(), "'<set A>~<set B>'"),
            "side": (pl.String(), "'a' or 'b'"),
            "path": (pl.String(), "'token ... → feature → ... → target'"),
            "graphs": (pl.Int64(), "that side's graphs where it is one of the top paths"),
            "matched": (pl.Int64(), "of those, graphs where every node of it has a match on the other side"),
        },
    ),
    "interventions": TableSchema(
        "one row per intervention run (steer)",
        {
            "run_id": (pl.String(), "id of the run"),
            "prompt": (pl.String(), "the prompt"),
            "features": (pl.List(pl.String()), "intervened features as <dictionary>/<layer>/<index>"),
            "mode": (pl.String(), "'set', 'scale' or 'zero'"),
            "value": (pl.Float64(), "value set or scale factor"),
            "positions": (pl.List(pl.Int32()), "positions acted on (empty: all but BOS)"),
            "freeze_attention": (pl.Boolean(), "attention patterns and norms frozen"),
            "top_token_before": (pl.String(), "most probable next token without intervention"),
            "top_token_after": (pl.String(), "with the intervention"),
            "logit_changes": (pl.String(), "JSON: the largest changes of next-token logits"),
            "generated": (pl.String(), "continuation sampled while steering (may be empty)"),
            "created_at": (pl.Datetime("us", "UTC"), "when it ran"),
            "node_positions": (
                pl.List(pl.List(pl.Int32())),
                "per feature, the positions acted on (empty: all but BOS; null: those of `positions`)",
            ),
            "slug": (pl.String(), "the graph whose nodes were steered from its page (null: `circuitdb steer`)"),
            "prompt_set": (pl.String(), "the prompt set of a `circuit ablate` run (null otherwise)"),
        },
        filled_later=frozenset({"node_positions", "slug", "prompt_set"}),
    ),
}


def feature_ids(dictionary: str, layer: int | list[int], indices: list[int]) -> list[str]:
    """`feature_id`s of latents `indices` of `dictionary` at `layer` (one layer, or one per index)."""
    layers = layer if isinstance(layer, list) else [layer] * len(indices)
    return [f"{dictionary}/{lay}/{index}" for lay, index in zip(layers, indices, strict=True)]


def layer_partition(dictionary: str, layer: int) -> str:
    """The partition of a per-layer table (dictionaries, features, exemplars, explanations...) for one layer."""
    return f"{dictionary}-layer-{layer:03d}"


def parse_feature_id(feature_id: str) -> tuple[str, int, int]:
    """A `feature_id` ('<dictionary>/<layer>/<index>', the key joining features, exemplars, vectors and
    graph nodes) → (dictionary, layer, index), or one clear error."""
    parts = feature_id.split("/")
    if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
        raise CircuitDBError(
            f"malformed feature id {feature_id!r}; expected <dictionary>/<layer>/<index>, e.g. plt/12/345"
        )
    return parts[0], int(parts[1]), int(parts[2])

"""Build, store and read attribution graphs: prompt → trace → attribute → prune → tables + JSON."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import NamedTuple

import polars as pl

from circuitdb.attribution.attribute import MemoryEstimate, attribute, check_prompt
from circuitdb.attribution.export import edge_frame, node_frame
from circuitdb.attribution.interventions import validate_edges
from circuitdb.attribution.pruning import prune
from circuitdb.attribution.replacement_model import ReplacementModel, start_positions, trace
from circuitdb.attribution.targets import TOP_LOGITS_TARGET, TargetSpec, check_spec
from circuitdb.attribution.transcoders import Transcoders, load_transcoders, stored_transcoders
from circuitdb.circuits.circuit_tracer_json import circuit_tracer_json
from circuitdb.config import AttributionConfig
from circuitdb.models import LoadedModel
from circuitdb.store import Store, read_table, write_partition
from circuitdb.store.graphs import graph_json_path, graph_slug
from circuitdb.store.layout import atomic_write_bytes


class NamedTranscoders(NamedTuple):
    transcoders: Transcoders
    name: str
    """How graphs name them: a store set's name, or a folder's absolute path."""


def resolve_transcoders(store: Store, cfg: AttributionConfig, folder: str | None) -> NamedTranscoders:
    """A folder of transcoders the user brings, or the configured store set."""
    if folder:
        return NamedTranscoders(load_transcoders(Path(folder)), str(Path(folder).resolve()))
    return NamedTranscoders(stored_transcoders(store, cfg.dictionaries), cfg.dictionaries)


def trace_prompt(lm: LoadedModel, prompt: str, transcoders: Transcoders, cfg: AttributionConfig) -> ReplacementModel:
    """The prompt traced through the replacement model, after the length checks, with the configured rule
    for the leading positions (circuit-tracer's by default)."""
    ids = lm.encode(prompt)
    check_prompt(len(ids), min(cfg.max_prompt_tokens, lm.max_context))
    start = cfg.start_positions if cfg.start_positions is not None else start_positions(lm)
    return trace(lm, ids, transcoders, start, cfg.start_error_nodes)


def target_tokens(lm: LoadedModel, graph) -> list[str]:
    """The target nodes' tokens: the logit's token, or the target's label when it is no single token."""
    vocab = lm.model.get_output_embeddings().weight.shape[0]
    return [
        lm.token_strings([token])[0] if 0 <= token < vocab else label
        for token, label in zip(graph.logit_tokens, graph.target_labels or graph.logit_tokens, strict=True)
    ]


def _describe(report: Callable[[str], None], cfg: AttributionConfig, estimate: MemoryEstimate) -> None:
    how = "every feature's row"
    if estimate.influence_first:
        how = "influence-first rows, kept" if estimate.rows_kept else "influence-first rows, then the kept graph's"
    report(
        f"{estimate.n_positions} tokens, {estimate.n_features} active features: ~{estimate.gb:.2f} GB for the graph "
        f"({how}; attribution.memory_gb {cfg.memory_gb}, max_feature_nodes {cfg.max_feature_nodes})"
    )


def build_graph(
    store: Store,
    lm: LoadedModel,
    prompt: str,
    named: NamedTranscoders,
    cfg: AttributionConfig,
    validate: bool = False,
    report: Callable[[str], None] | None = None,
    target: TargetSpec = TOP_LOGITS_TARGET,
    keep_json: bool = True,
) -> tuple[dict, list[dict]]:
    """Attribute `prompt` (for `target`: the top logits by default) with `named` transcoders, prune, and
    write `graphs`, `graph_nodes`, `graph_edges` rows (partition = slug) and, with `keep_json`,
    `<store>/graphs/<slug>.json` (`graph export` writes it from the rows otherwise). Returns the `graphs`
    row and, with `validate`, the intervention checks of the top features' edges into the first target
    (`validate_edges`). `report` hears the memory estimate before the graph is allocated."""
    check_spec(target)
    transcoders, dictionary = named
    started = time.perf_counter()
    rm = trace_prompt(lm, prompt, transcoders, cfg)
    graph = attribute(
        rm,
        logit_cumulative=cfg.logit_cumulative,
        max_logits=cfg.max_logits,
        target=target,
        max_feature_nodes=cfg.max_feature_nodes,
        memory_gb=cfg.memory_gb,
        report=partial(_describe, report, cfg) if report is not None else None,
    )
    seconds = time.perf_counter() - started
    validation = validate_edges(rm, graph, cfg.validate_top_features) if validate else []
    del rm  # the graph holds all it needs; pruning gets its memory
    started = time.perf_counter()
    pruned = prune(graph, cfg.node_threshold, cfg.edge_threshold)
    seconds += time.perf_counter() - started

    slug = graph_slug(prompt, lm.name, dictionary, graph.target)
    tokens, logit_tokens = lm.token_strings(graph.ids), target_tokens(lm, graph)
    labels = dict(read_table(store, "features", ["feature_id", "label"]).iter_rows())
    nodes = node_frame(graph, pruned, slug, dictionary, tokens, logit_tokens, labels)
    edges = edge_frame(graph, pruned, slug)
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("prompts", "prompts_file")}
    row = {
        "slug": slug,
        "prompt": prompt,
        "tokens": tokens,
        "token_ids": graph.ids,
        "model": lm.name,
        "dictionaries": dictionary,
        "n_active_features": graph.n_active_features,
        "n_nodes": graph.n_nodes,
        "n_nodes_pruned": nodes.height,
        "n_edges_pruned": edges.height,
        "replacement_score": pruned.replacement_score,
        "completeness_score": pruned.completeness_score,
        "target": graph.target,
        "top_logits": logit_tokens,
        "top_probabilities": graph.logit_probabilities.tolist(),
        "settings": json.dumps(settings),
        "seconds": seconds,
        "created_at": datetime.now(UTC),
    }
    if keep_json:
        document = circuit_tracer_json(row, nodes, edges, cfg.node_threshold)
        atomic_write_bytes(graph_json_path(store, slug), json.dumps(document).encode())
    write_partition(store, "graph_edges", slug, edges)
    write_partition(store, "graph_nodes", slug, nodes)
    write_partition(store, "graphs", slug, pl.DataFrame([row]))
    return row, validation

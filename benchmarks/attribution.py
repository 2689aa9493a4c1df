"""Attribution speed and memory on the embedded model: one prompt, 30 per-layer transcoders.

    python benchmarks/attribution.py [--prompt TEXT | --prompt-tokens N] [--max-feature-nodes M] [--memory-gb G]

Prints one JSON line: seconds (trace + attribution + pruning, model and transcoders already loaded),
load_seconds, peak_rss_gb, n_prompt_tokens, n_active_features, n_feature_rows (feature nodes with a
row), influence_first, n_nodes, n_nodes_pruned, n_edges_pruned, replacement_score, completeness_score,
transcoders ('trained: <where>' or 'random'); with --against-dense also the dense graph's figures
(every active feature given its exact row): top_overlap, the share of the kept features that are among the
dense graph's most influential as many, and influence_share, their exact influence over that top's.
`--prompt-tokens N` repeats a fixed text to N tokens
(BOS included) and prints it on stderr. Without --max-feature-nodes every active feature is a node.

Transcoders come from --transcoders DIR (any format the registry reads), else from the store that
`make demo` builds, else random ones of the demo's shape (4096 latents, k=32, skip), which time the
same arithmetic but explain nothing.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import torch

from circuitdb.attribution import Graph, Transcoders, attribute, load_transcoders, prune, stored_transcoders, trace
from circuitdb.attribution.pruning import node_influence
from circuitdb.attribution.replacement_model import start_positions
from circuitdb.config import DictionaryConfig
from circuitdb.dictionaries import SparseCoder
from circuitdb.errors import CircuitDBError
from circuitdb.project import Project

PROMPT = "The capital of France is Paris, and the capital of Germany is"
FILLER = "The capital of France is Paris, and the capital of Germany is Berlin. "


def _random_transcoders(n_layers: int, d: int, n_latents: int, k: int) -> Transcoders:
    torch.manual_seed(0)
    coders = {}
    for layer in range(n_layers):
        coder = SparseCoder(DictionaryConfig(kind="plt", n_latents=n_latents, k=k, skip=True), d, d)
        with torch.no_grad():
            coder.W_skip.normal_(std=d**-0.5)
        coders[layer] = coder
    return Transcoders(coders, name="random")


def _against_dense(rm, capped: Graph) -> dict[str, float]:
    """How the capped graph's features compare with the dense graph's most influential as many."""
    dense = attribute(rm, progress=False)
    influence = node_influence(dense)[: dense.n_features]
    best = influence.topk(capped.n_features).indices
    where = {key: i for i, key in enumerate(_keys(dense))}
    kept = torch.tensor([where[key] for key in _keys(capped)])
    return {
        "top_overlap": round(len(set(kept.tolist()) & set(best.tolist())) / len(best), 4),
        "influence_share": round(float(influence[kept].sum() / influence[best].sum()), 4),
    }


def _keys(graph: Graph) -> list[tuple[int, int, int]]:
    f = graph.features
    return list(zip(f.layer.tolist(), f.position.tolist(), f.index.tolist(), strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transcoders", default=None, help="folder of transcoders in any format the registry reads")
    parser.add_argument("--store", default=None, help="store built by `make demo` (default: the configured one)")
    parser.add_argument("--prompt", default=PROMPT)
    parser.add_argument("--prompt-tokens", type=int, default=None, help="a prompt of exactly N tokens (BOS incl.)")
    parser.add_argument("--max-feature-nodes", type=int, default=None)
    parser.add_argument("--memory-gb", type=float, default=None, help="default: attribution.memory_gb")
    parser.add_argument("--against-dense", action="store_true", help="compare the kept features with the dense graph's")
    args = parser.parse_args()
    project = Project.open(overrides={"store": args.store})
    config = project.config
    started = time.perf_counter()
    lm = project.model
    if args.transcoders:
        transcoders, source = load_transcoders(args.transcoders), f"trained: {args.transcoders}"
    else:
        try:
            transcoders = stored_transcoders(project.built().store, config.dictionaries.name)
            source = f"trained: {config.store}"
        except CircuitDBError:
            transcoders, source = _random_transcoders(lm.n_layers, lm.d_model, 4096, 32), "random"
    load_seconds = time.perf_counter() - started

    ids = lm.encode(args.prompt)
    if args.prompt_tokens:
        ids = lm.encode(FILLER * (args.prompt_tokens // 10 + 1))[: args.prompt_tokens]
        print(repr(lm.tokenizer.decode(ids[1:])), file=sys.stderr)
    memory_gb = args.memory_gb or config.attribution.memory_gb
    started = time.perf_counter()
    rm = trace(lm, ids, transcoders, start_positions(lm), start_error_nodes=False)  # circuit-tracer's rule
    estimates = []
    graph = attribute(
        rm, progress=False, max_feature_nodes=args.max_feature_nodes, memory_gb=memory_gb, report=estimates.append
    )
    (estimate,) = estimates
    agreement = _against_dense(rm, graph) if args.against_dense else {}
    del rm, transcoders  # not needed once the graph exists; pruning then has their memory
    pruned = prune(graph)
    seconds = time.perf_counter() - started
    result = {
        "seconds": round(seconds, 2),
        "load_seconds": round(load_seconds, 2),
        "prompt": args.prompt if not args.prompt_tokens else f"{args.prompt_tokens} tokens of FILLER",
        "n_prompt_tokens": len(ids),
        "n_active_features": graph.n_active_features,
        "n_feature_rows": graph.n_features,
        "influence_first": estimate.influence_first,
        "memory_estimate_gb": round(estimate.gb, 2),
        "n_nodes": graph.n_nodes,
        "n_nodes_pruned": int(pruned.node_mask.count_nonzero()),
        "n_edges_pruned": int(pruned.edge_mask.count_nonzero()),
        "replacement_score": round(pruned.replacement_score, 4),
        "completeness_score": round(pruned.completeness_score, 4),
        "transcoders": source,
        "device": str(lm.device),
    }
    result |= agreement
    result["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()

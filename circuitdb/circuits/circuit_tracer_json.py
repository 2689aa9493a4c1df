"""A stored graph's rows in circuit-tracer's JSON schema (metadata, qParams, nodes, links), which its viewers and
Neuronpedia open. NumPy and polars only: `graph export` writes it from the tables without torch."""

from __future__ import annotations

import numpy as np
import polars as pl


def circuit_tracer_json(graph_row: dict, nodes: pl.DataFrame, edges: pl.DataFrame, node_threshold: float) -> dict:
    """The graph in circuit-tracer's JSON schema (metadata, qParams, nodes, links) for its viewers."""
    feature_type = {
        "feature": "cross layer transcoder",
        "error": "mlp reconstruction error",
        "token": "embedding",
        "logit": "logit",
    }
    influence = nodes["influence"].to_numpy().astype(np.float64)
    order = influence.argsort()[::-1]
    share = np.empty_like(influence)  # each node's cumulative share of the influence, largest first
    share[order] = influence[order].cumsum() / max(float(influence.sum()), 1e-30)
    top_logit = nodes.filter(pl.col("kind") == "logit")["node_id"].head(1).to_list()
    json_nodes = []
    for i, row in enumerate(nodes.iter_rows(named=True)):
        kind = row["kind"]
        layer = {"token": "E"}.get(kind, str(row["layer"]))
        json_nodes.append(
            {
                "node_id": row["node_id"],
                "feature": row["index"] if kind != "error" else -1,
                "layer": layer,
                "ctx_idx": row["position"],
                "feature_type": feature_type[kind],
                "token_prob": row["activation"] if kind == "logit" else 0.0,
                "is_target_logit": row["node_id"] in top_logit,
                "run_idx": 0,
                "reverse_ctx_idx": 0,
                "jsNodeId": row["node_id"],
                "clerp": row["label"],
                "influence": float(share[i]),
                "activation": row["activation"] if kind == "feature" else None,
            }
        )
    return {
        "metadata": {
            "slug": graph_row["slug"],
            "scan": graph_row["model"],
            "transcoder_list": [graph_row["dictionaries"]],
            "prompt_tokens": graph_row["tokens"],
            "prompt": graph_row["prompt"],
            "target": graph_row["target"] or "top logits",
            "node_threshold": node_threshold,
            "schema_version": 1,
        },
        "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""},
        "nodes": json_nodes,
        "links": [
            {"source": s, "target": t, "weight": w}
            for s, t, w in edges.select("source", "target", "weight").iter_rows()
        ],
    }

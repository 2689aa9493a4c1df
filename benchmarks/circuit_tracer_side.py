"""circuit-tracer's side of `vs_circuit_tracer.py`: run in the side environment (circuit-tracer 0.5.0,
transformers 4.57.3, nnsight), never imported by circuitdb.

    <side venv>/bin/python benchmarks/circuit_tracer_side.py JOB.json

JOB.json: model_dir, transcoders (folder of `layer_<i>.safetensors` + config.yaml), n_layers, out (folder),
prompts: [{name, ids, max_feature_nodes, custom: null | {label, prob, vector (.npy path)}}].
For each prompt not already done it runs circuit-tracer's own `attribute`, `prune_graph`,
`compute_graph_scores` and `create_graph_files`, writing `<out>/<name>.json` (its graph file) and
`<out>/<name>.scores.json`. Nothing here is ours: the point is circuit-tracer's result.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from circuit_tracer import ReplacementModel, attribute
from circuit_tracer.attribution.targets import CustomTarget
from circuit_tracer.graph import compute_graph_scores, prune_graph
from circuit_tracer.transcoder.single_layer_transcoder import load_transcoder_set
from circuit_tracer.utils.create_graph_files import create_graph_files


def _targets(prompt: dict) -> list[CustomTarget] | None:
    custom = prompt.get("custom")
    if custom is None:
        return None
    vector = torch.from_numpy(np.load(custom["vector"])).float()
    return [CustomTarget(token_str=custom["label"], prob=float(custom["prob"]), vec=vector)]


def main(job_file: str) -> None:
    job = json.loads(Path(job_file).read_text())
    out = Path(job["out"])
    out.mkdir(parents=True, exist_ok=True)
    todo = [p for p in job["prompts"] if not (out / f"{p['name']}.scores.json").is_file()]
    if not todo:
        return
    torch.set_grad_enabled(True)
    folder = Path(job["transcoders"])
    paths = {layer: str(folder / f"layer_{layer}.safetensors") for layer in range(job["n_layers"])}
    transcoders = load_transcoder_set(
        paths,
        scan="vs-circuitdb",
        feature_input_hook="mlp.hook_in",
        feature_output_hook="mlp.hook_out",
        device=torch.device("cpu"),
        lazy_encoder=False,
        lazy_decoder=False,
    )
    model = ReplacementModel.from_pretrained_and_transcoders(
        job["model_dir"], transcoders, backend="nnsight", device=torch.device("cpu"), dtype=torch.float32
    )
    for prompt in todo:
        started = time.perf_counter()
        ids = torch.tensor(prompt["ids"], dtype=torch.long)
        graph = attribute(
            ids,
            model,
            attribution_targets=_targets(prompt),
            max_feature_nodes=prompt["max_feature_nodes"],
            verbose=True,
        )
        seconds = time.perf_counter() - started
        replacement, completeness = compute_graph_scores(graph)
        node_mask, _, _ = prune_graph(graph, 0.8, 0.98)
        create_graph_files(graph, prompt["name"], str(out), scan="vs-circuitdb", node_threshold=0.8)
        scores = {
            "replacement_score": replacement,
            "completeness_score": completeness,
            "n_active_features": int(graph.active_features.shape[0]),
            "n_feature_nodes": len(graph.selected_features),
            "n_nodes": int(graph.adjacency_matrix.shape[0]),
            "n_nodes_pruned": int(node_mask.sum()),
            "seconds": seconds,
        }
        (out / f"{prompt['name']}.scores.json").write_text(json.dumps(scores))
        print(json.dumps({"prompt": prompt["name"], **scores}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])

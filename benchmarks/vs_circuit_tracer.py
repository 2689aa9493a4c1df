"""Our attribution graphs against circuit-tracer's own, on the same model, transcoder files and tokens.

    python benchmarks/vs_circuit_tracer.py [--sets random,trained] [--write-fixture]

Builds once (cached under $CIRCUITDB_CACHE/vs-circuit-tracer) a side environment with circuit-tracer 0.5.0
and its pinned transformers 4.57.3 + nnsight 0.6.3 (never a dependency of ours), the embedded model as a
folder both can load offline, and two 30-layer transcoder sets in circuit-tracer's format:
- `random`: random encoders with per-latent JumpReLU thresholds at a fixed firing rate, decoders fitted by
  ridge regression to the model's MLP outputs (so features, not only errors, carry influence);
- `trained`: BatchTopK transcoders trained by our own trainer on the embedded corpus (a JumpReLU with one
  threshold at inference, which circuit-tracer's loader reads).
For each prompt it runs circuit-tracer's `attribute` + `prune_graph` + `compute_graph_scores` +
`create_graph_files` in the side environment (results cached: circuit-tracer takes minutes a graph here),
and our `circuitdb graph build --transcoders` through the CLI into a scratch store, then compares the
two graph files with nodes matched by meaning: feature (layer, position, index), error (layer,
position), token (position), logit (token, or the custom target).

Prints one JSON line: node_jaccard (worst uncapped prompt), node_jaccard_capped, top50_overlap (worst:
shared share of the 50 most influential nodes), edge_max_rel_err (over edges both kept: the difference
relative to the largest edge into the same target, since both sum float32 terms in different orders and
an edge that is a near-cancellation of large terms differs more relative to itself; the per-edge figures
are in `prompts`), score_max_abs_diff (replacement and completeness), prompts (per prompt and set: the
figures, node counts, seconds of each).
`--write-fixture` writes `tests/fixtures/vs_circuit_tracer.json`: circuit-tracer's node sets and scores of
the random set, whose transcoders the test rebuilds from their seed (so the suite pins them without
the side environment).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from circuitdb.config import CorpusConfig, DictionaryConfig, TrainConfig
from circuitdb.corpus import iter_documents
from circuitdb.dictionaries import SparseCoder
from circuitdb.dictionaries.formats.circuit_tracer import export_transcoders
from circuitdb.dictionaries.train import train_dictionary
from circuitdb.models import load_model
from circuitdb.models.hooks import capture, resolve_hooks
from circuitdb.models.loading import _plain_directory, cache_root

ROOT = Path(__file__).resolve().parent.parent
SIDE_PACKAGES = ["circuit-tracer==0.5.0", "transformers==4.57.3", "nnsight==0.6.3"]
CAP = 7500
PROMPTS = [  # the trained set runs the first (circuit-tracer takes ~7 min a graph on 2 cores)
    {"name": "capital", "text": "The capital of France is Paris, and the capital of Germany is", "cap": None},
    {"name": "code", "text": "def add(a, b):\n    return a +", "cap": None},
    {
        "name": "long",
        "text": "When Mary and John went to the store, John gave a drink to Mary. Later that evening they walked "
        "back home along the river, talking about the books they had read that week, and then John said to",
        "cap": CAP,
    },
    {
        "name": "difference",
        "text": "The capital of France is Paris, and the capital of Germany is",
        "cap": None,
        "difference": (" Berlin", " Paris"),
    },
]
FIXTURE = ROOT / "tests" / "fixtures" / "vs_circuit_tracer.json"


def _run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, check=True, **kwargs)


def side_environment(cache: Path) -> Path:
    """The side venv's python, built once: torch (the local CPU wheel) first, then circuit-tracer."""
    venv = cache / "venv"
    python = venv / "bin" / "python"
    marker = venv / ".installed"
    if marker.is_file() and marker.read_text() == " ".join(SIDE_PACKAGES):
        return python
    shutil.rmtree(venv, ignore_errors=True)
    _run([sys.executable, "-m", "venv", str(venv)])
    _run([str(python), "-m", "pip", "install", "--quiet", "torch==2.13.0"])
    _run([str(python), "-m", "pip", "install", "--quiet", *SIDE_PACKAGES])
    marker.write_text(" ".join(SIDE_PACKAGES))
    return python


def model_folder(cache: Path) -> Path:
    """The embedded model as a folder transformers 4.57 reads: our plain copy (same weights), with the
    rope setting spelled the old way (4.57 does not read `rope_parameters` and would silently use theta
    10,000) and the tokenizer class named as 4.57 knows it."""
    source = Path(_plain_directory("embedded"))
    target = cache / "model"
    if (target / "tokenizer_config.json").is_file():
        return target
    target.mkdir(parents=True, exist_ok=True)
    patched = ("config.json", "tokenizer_config.json")
    for item in source.iterdir():
        if item.name not in patched:
            (target / item.name).unlink(missing_ok=True)
            (target / item.name).symlink_to(item)
    config = json.loads((source / "config.json").read_text())
    rope = config.pop("rope_parameters", {})
    config["rope_theta"] = rope.get("rope_theta", 10_000.0)
    config["torch_dtype"] = config.pop("dtype", "float32")
    (target / "config.json").write_text(json.dumps(config, indent=2))
    tokenizer = json.loads((source / "tokenizer_config.json").read_text())
    tokenizer["tokenizer_class"] = "PreTrainedTokenizerFast"
    (target / "tokenizer_config.json").write_text(json.dumps(tokenizer, indent=2))
    return target


def _corpus_blocks(lm, n_blocks: int, context: int) -> torch.Tensor:
    """Token blocks (BOS first) of the embedded corpus, for calibrating and training transcoders."""
    stream: list[int] = []
    for text in iter_documents(CorpusConfig()):
        stream += lm.encode(text, add_bos=False)
        if len(stream) >= n_blocks * (context - 1):
            break
    body = torch.tensor(stream[: n_blocks * (context - 1)]).view(n_blocks, context - 1)
    return torch.cat([torch.full((n_blocks, 1), lm.bos_token_id), body], dim=1)


@torch.no_grad()
def _activations(lm, blocks: torch.Tensor) -> dict[str, torch.Tensor]:
    """mlp_in.l and mlp_out.l of every layer, position 0 left out: {hook: [tokens, d]}."""
    hooks = resolve_hooks(lm, [f"{kind}.{layer}" for layer in range(lm.n_layers) for kind in ("mlp_in", "mlp_out")])
    parts = [capture(lm, blocks[i : i + 8], hooks) for i in range(0, len(blocks), 8)]
    return {name: torch.cat([p[name][:, 1:] for p in parts]).flatten(0, 1).float() for name in parts[0]}


def random_set(lm, seed: int = 0, n_latents: int = 4096, firing: float = 4e-3) -> dict[int, SparseCoder]:
    """Random encoders, thresholds at the (1 − firing) quantile of each latent's pre-activation on the
    corpus, decoders fitted by ridge regression to the MLP outputs; deterministic from `seed`."""
    acts = _activations(lm, _corpus_blocks(lm, 16, 128))
    generator = torch.Generator().manual_seed(seed)
    coders = {}
    for layer in range(lm.n_layers):
        x, y = acts[f"mlp_in.{layer}"], acts[f"mlp_out.{layer}"]
        cfg = DictionaryConfig(kind="plt", activation="jumprelu", n_latents=n_latents, k=1)
        coder = SparseCoder(cfg, lm.d_model, lm.d_model)
        with torch.no_grad():
            coder.W_enc.copy_(torch.randn(n_latents, lm.d_model, generator=generator) / lm.d_model**0.5)
            coder.b_enc.zero_()
            coder.b_dec.zero_()
            pre = x @ coder.W_enc.T
            threshold = pre.quantile(1 - firing, dim=0).clamp_min(1e-3)
            coder.activation.log_threshold.copy_(threshold.log())
            latents = coder.activation(pre)
            gram = latents.T @ latents + 1e-2 * torch.eye(n_latents)
            coder.W_dec.copy_(torch.linalg.solve(gram, latents.T @ y))
        coders[layer] = coder.eval()
    return coders


class _InMemory:
    """One layer's (mlp_in, mlp_out) tokens as the training loop's activation source."""

    def __init__(self, layer: int, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y, self.d = x, y, x.shape[1]
        self.input_hooks, self.target_hooks = [f"mlp_in.{layer}"], [f"mlp_out.{layer}"]

    @property
    def n_tokens(self) -> int:
        return len(self.x)

    def batches(self, batch_size: int, seed: int, epoch: int, shuffle_mb: int = 256):
        order = torch.randperm(len(self.x), generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        for start in range(0, len(order) - batch_size + 1, batch_size):
            pick = order[start : start + batch_size]
            yield self.x[pick, None], self.y[pick, None]


def trained_set(lm) -> dict[int, SparseCoder]:
    """BatchTopK transcoders (k = 16) trained by our trainer, one per layer, on 8k corpus tokens: small but
    real. At inference BatchTopK is a JumpReLU with one learned threshold, which circuit-tracer reads."""
    acts = _activations(lm, _corpus_blocks(lm, 64, 128))
    cfg = DictionaryConfig(kind="plt", activation="batchtopk", n_latents=4096, k=16)
    train = TrainConfig(batch_size=512, epochs=3, checkpoint_every=0, device="cpu")
    coders = {}
    for layer in range(lm.n_layers):
        source = _InMemory(layer, acts[f"mlp_in.{layer}"], acts[f"mlp_out.{layer}"])
        coders[layer] = train_dictionary(cfg, source, train, progress=False).coder
        print(f"trained layer {layer}", file=sys.stderr)
    return coders


def transcoder_folder(cache: Path, name: str, lm) -> Path:
    folder = cache / "transcoders" / name
    if not (folder / "config.yaml").is_file():
        coders = random_set(lm) if name == "random" else trained_set(lm)
        export_transcoders(coders, folder, "embedded")
    return folder


def _target_vector(lm, cache: Path, pair: tuple[str, str]) -> tuple[Path, str]:
    """The unembedding difference of two tokens, as circuit-tracer's CustomTarget takes it."""
    a, b = (lm.encode(token, add_bos=False) for token in pair)
    unembedding = lm.model.get_submodule(lm.arch.unembedding).weight.detach()
    path = cache / f"target-{a[0]}-{b[0]}.npy"
    np.save(path, (unembedding[a[0]] - unembedding[b[0]]).float().numpy())
    return path, f"{pair[0]!r} - {pair[1]!r}"


def set_prompts(name: str) -> list[dict]:
    return PROMPTS if name == "random" else PROMPTS[:1]


def circuit_tracer_graphs(python: Path, cache: Path, lm, folder: Path, model_dir: Path) -> tuple[Path, list[dict]]:
    """circuit-tracer's graph files and scores for every prompt (cached by transcoders + ids + cap)."""
    out = cache / "graphs" / folder.name
    prompts = []
    for prompt in set_prompts(folder.name):
        ids = lm.encode(prompt["text"])
        custom = None
        if "difference" in prompt:
            vector, label = _target_vector(lm, cache, prompt["difference"])
            custom = {"label": label, "prob": 1.0, "vector": str(vector)}
        key = hashlib.sha256(json.dumps([ids, prompt["cap"], custom is not None]).encode()).hexdigest()[:12]
        name = f"{prompt['name']}-{key}"
        prompts.append({"name": name, "ids": ids, "max_feature_nodes": prompt["cap"], "custom": custom})
    job = {"model_dir": str(model_dir), "transcoders": str(folder), "n_layers": lm.n_layers, "out": str(out)}
    job_file = cache / f"job-{folder.name}.json"
    job_file.write_text(json.dumps(job | {"prompts": prompts}))
    _run([str(python), str(ROOT / "benchmarks" / "circuit_tracer_side.py"), str(job_file)])
    return out, prompts


def our_graph(store: Path, folder: Path, prompt: dict) -> tuple[dict, dict]:
    """Our graph of the prompt through the CLI, as a user builds it: (its JSON file, its `graphs` row)."""
    command = [str(Path(sys.executable).parent / "circuitdb"), "graph", "build", prompt["text"]]
    command += ["--transcoders", str(folder), "--store", str(store), "-f", "json"]
    command += ["--max-feature-nodes", str(prompt["cap"] or 10**7)]  # uncapped: every active feature, as theirs
    if "difference" in prompt:
        command += ["--target", prompt["difference"][0], "-", prompt["difference"][1]]
    line = _run(command, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    row = json.loads(line)
    document = json.loads((store / "graphs" / f"{row['slug']}.json").read_text())
    return document, row


def node_key(node: dict) -> tuple:
    """A node by meaning, whichever tool wrote it."""
    kind = node["feature_type"]
    if kind == "cross layer transcoder":
        layer, index, position = node["node_id"].split("_")
        return ("feature", int(layer), int(position), int(index))
    if kind == "mlp reconstruction error":
        return ("error", int(node["layer"]), int(node["ctx_idx"]))
    if kind == "embedding":
        return ("token", int(node["ctx_idx"]))
    return ("logit",) + ((node["feature"],) if node["feature"] < 10**9 else ())


def _score_differences(row: dict, scores: dict) -> list[float]:
    return [abs(row[key] - scores[key]) for key in ("replacement_score", "completeness_score")]


def compare(ours: dict, theirs: dict, scores: dict, row: dict) -> dict:
    """Node Jaccard, top-50 overlap, edge agreement and score differences of two graph files."""

    def keyed(document: dict) -> dict[str, tuple]:
        return {node["node_id"]: node_key(node) for node in document["nodes"]}

    our_keys, their_keys = keyed(ours), keyed(theirs)
    a, b = set(our_keys.values()), set(their_keys.values())

    def top(document: dict, keys: dict[str, tuple]) -> set:
        ranked = [n for n in document["nodes"] if n.get("influence") is not None and n["feature_type"] != "logit"]
        ranked.sort(key=lambda n: n["influence"])  # cumulative share: the most influential first
        return {keys[n["node_id"]] for n in ranked[:50]}

    top_ours, top_theirs = top(ours, our_keys), top(theirs, their_keys)

    def edges(document: dict, keys: dict[str, tuple]) -> dict[tuple, float]:
        return {(keys[link["source"]], keys[link["target"]]): link["weight"] for link in document["links"]}

    our_edges, their_edges = edges(ours, our_keys), edges(theirs, their_keys)
    shared = list(our_edges.keys() & their_edges.keys())
    largest: dict[tuple, float] = {}  # each target's largest incoming |weight| (theirs)
    for (_, target), weight in their_edges.items():
        largest[target] = max(largest.get(target, 0.0), abs(weight))
    difference = np.array([abs(our_edges[e] - their_edges[e]) for e in shared])
    per_edge = difference / np.maximum(np.abs([their_edges[e] for e in shared]), 1e-30)
    per_target = difference / np.array([largest[e[1]] for e in shared])
    return {
        "node_jaccard": round(len(a & b) / len(a | b), 4),
        "top50_overlap": round(len(top_ours & top_theirs) / max(len(top_theirs), 1), 4),
        "edge_max_rel_err": float(f"{per_target.max(initial=0.0):.3g}"),
        "edge_p999_rel_err_per_edge": float(f"{np.quantile(per_edge, 0.999) if len(shared) else 0.0:.3g}"),
        "edge_max_rel_err_per_edge": float(f"{per_edge.max(initial=0.0):.3g}"),
        "edges_shared": len(shared),
        "edge_jaccard": round(len(shared) / len(our_edges.keys() | their_edges.keys()), 4),
        "nodes": [len(a), len(b)],
        "features": [sum(k[0] == "feature" for k in a), sum(k[0] == "feature" for k in b)],
        "replacement": [round(row["replacement_score"], 6), round(scores["replacement_score"], 6)],
        "completeness": [round(row["completeness_score"], 6), round(scores["completeness_score"], 6)],
        "score_abs_diff": float(f"{max(_score_differences(row, scores)):.3g}"),
        "active_features": [row["n_active_features"], scores["n_active_features"]],
        "seconds": [round(row["seconds"], 1), round(scores["seconds"], 1)],
    }


def write_fixture(out: Path, jobs: list[dict]) -> None:
    """circuit-tracer's kept nodes (by meaning) and scores of the random set's uncapped top-logit prompts."""
    graphs = {}
    for prompt, job in zip(PROMPTS, jobs, strict=True):
        if prompt["cap"] or "difference" in prompt:
            continue
        document = json.loads((out / f"{job['name']}.json").read_text())
        scores = json.loads((out / f"{job['name']}.scores.json").read_text())
        nodes = sorted({node_key(node) for node in document["nodes"]})
        graphs[f"random/{prompt['name']}"] = {"text": prompt["text"], "their_nodes": nodes, "their_scores": scores}
    FIXTURE.parent.mkdir(exist_ok=True)
    FIXTURE.write_text(json.dumps({"circuit_tracer": SIDE_PACKAGES, "graphs": graphs}, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="random,trained", help="transcoder sets to compare: random, trained")
    parser.add_argument("--write-fixture", action="store_true", help="pin circuit-tracer's random-set results")
    args = parser.parse_args()
    cache = cache_root() / "vs-circuit-tracer"
    cache.mkdir(parents=True, exist_ok=True)
    python = side_environment(cache)
    model_dir = model_folder(cache)
    lm = load_model("embedded", "cpu")
    runs = {}
    for name in args.sets.split(","):
        folder = transcoder_folder(cache, name, lm)
        out, jobs = circuit_tracer_graphs(python, cache, lm, folder, model_dir)
        runs[name] = (folder, out, jobs)
    if args.write_fixture:
        write_fixture(*runs["random"][1:])
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for name, (folder, out, jobs) in runs.items():
            for prompt, job in zip(set_prompts(name), jobs, strict=True):
                theirs = json.loads((out / f"{job['name']}.json").read_text())
                scores = json.loads((out / f"{job['name']}.scores.json").read_text())
                ours, row = our_graph(Path(scratch) / "store", folder, prompt)
                results[f"{name}/{prompt['name']}"] = compare(ours, theirs, scores, row) | {"cap": prompt["cap"]}
    uncapped = [r for r in results.values() if not r["cap"]]
    capped = [r for r in results.values() if r["cap"]]
    summary = {
        "node_jaccard": min(r["node_jaccard"] for r in uncapped),
        "node_jaccard_capped": min((r["node_jaccard"] for r in capped), default=None),
        "top50_overlap": min(r["top50_overlap"] for r in results.values()),
        "edge_max_rel_err": max(r["edge_max_rel_err"] for r in results.values()),
        "score_max_abs_diff": max(r["score_abs_diff"] for r in results.values()),
        "prompts": results,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()

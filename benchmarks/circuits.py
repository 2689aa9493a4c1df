"""Circuits over a prompt set on a built store (the embedded model and its transcoders), and the aggregate
queries at 1,000 graphs on synthetic partitions.

    python benchmarks/circuits.py [--store DIR] [--prompts N] [--synthetic-graphs 1000]

Prints one JSON line: prompts, seconds_per_graph (building the set's graphs back to back, model and
transcoders loaded once), peak_rss_gb, bytes_per_graph (the set's graph rows on disk: no JSON), aggregate_s
(aggregating the set), ablation_seconds_per_prompt (zeroing its 5 most recurring features and a random control
on every prompt, frozen attention; ablation_diverged: prompts whose intervened logits were not finite), and
at --synthetic-graphs graphs: synthetic_aggregate_s and aggregate_p50_ms (median of three queries: top
recurring features of the set, edges into its top feature, features shared with a second set).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

# benchmarks/query.py shadows the `query` package when a script here runs: leave this folder off the path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]

import polars as pl  # noqa: E402

from circuitdb.attribution.pipeline import NamedTranscoders  # noqa: E402
from circuitdb.circuits.ablation import ablate_set, top_recurring  # noqa: E402
from circuitdb.circuits.aggregate import aggregate_set  # noqa: E402
from circuitdb.circuits.building import build_prompt_set  # noqa: E402
from circuitdb.circuits.prompt_sets import SetPrompt, define_set, set_rows  # noqa: E402
from circuitdb.project import Project  # noqa: E402
from circuitdb.store import Store, write_partition  # noqa: E402
from query.engine import keep_catalog, run_sql  # noqa: E402

COUNTRIES = [
    ("France", " Paris"), ("Germany", " Berlin"), ("Italy", " Rome"), ("Spain", " Madrid"), ("Japan", " Tokyo"),
    ("Egypt", " Cairo"), ("Russia", " Moscow"), ("Greece", " Athens"), ("Poland", " Warsaw"), ("Austria", " Vienna"),
    ("Norway", " Oslo"), ("Sweden", " Stockholm"), ("Portugal", " Lisbon"), ("Ireland", " Dublin"),
    ("Finland", " Helsinki"), ("Hungary", " Budapest"),
]  # fmt: skip


def capitals(count: int) -> list[SetPrompt]:
    """'... the capital of X is' (its capital tagged), cycling through the countries, then the phrasings."""
    frames = [  # 10-16 tokens each, as the target sets
        "In the atlas on my desk, the capital city of {} is",
        "Every schoolchild knows that the capital of {} is",
        "Question: what is the capital of {}? Answer: the capital is",
        "Travel guide, chapter one: the capital of {} is",
    ]
    prompts = []
    for i in range(count):
        country, city = COUNTRIES[i % len(COUNTRIES)]
        prompts.append(SetPrompt(frames[(i // len(COUNTRIES)) % len(frames)].format(country), "", [country, city]))
    return prompts


def synthetic_set(store: Store, name: str, graphs: int, seed: int) -> float:
    """`graphs` graphs of random rows (200 features of 30 layers × 12 positions, 2,000 edges each) as one prompt
    set; returns the seconds its aggregation took."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    rows = []
    for g in range(graphs):
        slug = f"{name}-{g:05d}"
        features = {(rng.randrange(30), rng.randrange(4096), rng.randrange(12)) for _ in range(200)}
        nodes = [
            {"slug": slug, "node_id": f"{layer}_{index}_{pos}", "kind": "feature", "feature_id": f"plt/{layer}/{index}"}
            | {"layer": layer, "position": pos, "index": index, "token": "t", "activation": rng.random()}
            | {"influence": rng.random() / 100, "label": ""}
            for layer, index, pos in features
        ]
        nodes.append(
            {"slug": slug, "node_id": "31_1_11", "kind": "logit", "feature_id": None, "layer": 30, "position": 11}
            | {"index": 1, "token": " x", "activation": 0.9, "influence": 0.0, "label": ""}
        )
        ids = [n["node_id"] for n in nodes]
        pairs = [{"slug": slug, "source": rng.choice(ids[:-1]), "target": rng.choice(ids)} for _ in range(2000)]
        edges = pl.DataFrame(pairs).unique(["source", "target"], maintain_order=True)
        edges = edges.with_columns(weight=pl.Series([rng.gauss(0, 1) for _ in range(edges.height)]))
        write_partition(store, "graph_nodes", slug, pl.DataFrame(nodes))
        write_partition(store, "graph_edges", slug, edges.select("slug", "source", "target", "weight"))
        graph = {"slug": slug, "prompt": slug, "tokens": ["t"] * 12, "token_ids": list(range(12)), "model": "m"}
        graph |= {"dictionaries": "plt", "n_active_features": 200, "n_nodes": 201, "n_nodes_pruned": 201}
        graph |= {"n_edges_pruned": edges.height, "replacement_score": rng.random(), "completeness_score": rng.random()}
        graph |= {"target": "", "top_logits": [" x"], "top_probabilities": [0.9], "settings": "{}", "seconds": 1.0}
        write_partition(store, "graphs", slug, pl.DataFrame([graph | {"created_at": now}]))
        rows.append({"prompt_set": name, "position": g, "prompt": slug, "target": "", "tags": [], "slug": slug})
    write_partition(store, "prompt_sets", name, pl.DataFrame([r | {"created_at": now} for r in rows]))
    started = time.perf_counter()
    aggregate_set(store, name)
    return time.perf_counter() - started


def aggregate_queries(store: Store, first: str, second: str, repeats: int = 10) -> float:
    """Median milliseconds of the three set queries, through one kept catalog (as the viewer and a notebook
    session hold one)."""
    keep_catalog(store)
    top = run_sql(store, f"SELECT feature_id FROM circuit_features WHERE prompt_set = '{first}' LIMIT 1").rows[0][0]
    queries = [
        f"SELECT feature_id, graphs, mean_influence FROM circuit_features WHERE prompt_set = '{first}' "
        "ORDER BY graphs DESC, mean_influence DESC LIMIT 20",
        f"SELECT source, graphs, mean_weight FROM circuit_edges WHERE prompt_set = '{first}' AND target = '{top}' "
        "ORDER BY graphs DESC LIMIT 20",
        f"SELECT a.feature_id, a.graphs, b.graphs FROM circuit_features a JOIN circuit_features b USING (feature_id) "
        f"WHERE a.prompt_set = '{first}' AND b.prompt_set = '{second}' ORDER BY a.graphs + b.graphs DESC LIMIT 20",
    ]
    times = []
    for _ in range(repeats):
        for sql in queries:
            started = time.perf_counter()
            run_sql(store, sql)
            times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=None, help="a store built by `make demo` (default: the configured one)")
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--synthetic-graphs", type=int, default=1000)
    args = parser.parse_args()
    project = Project.open(overrides={"store": args.store}).built()
    store, cfg = project.store, project.config.attribution
    name = f"capitals-{args.prompts}-{int(time.time())}"  # a new set: every graph is built, none resumed
    define_set(store, name, capitals(args.prompts))
    named = NamedTranscoders(project.transcoders(cfg.dictionaries), cfg.dictionaries)
    model = project.model  # loaded before the clock starts, as in a long-lived process
    started = time.perf_counter()
    build_prompt_set(store, model, named, cfg, name)
    seconds_per_graph = (time.perf_counter() - started) / args.prompts
    slugs = set_rows(store, name)["slug"].to_list()
    on_disk = sum(
        store.table_file(t, s).stat().st_size for t in ("graphs", "graph_nodes", "graph_edges") for s in slugs
    )
    started = time.perf_counter()
    aggregate_set(store, name)
    aggregate_s = time.perf_counter() - started
    started = time.perf_counter()
    ablation_run = ablate_set(store, model, named.transcoders, cfg, name, top_recurring(store, name, 5), True)
    ablation = (time.perf_counter() - started) / args.prompts
    with tempfile.TemporaryDirectory() as folder:
        synthetic = Store(folder)
        synthetic_s = synthetic_set(synthetic, "synthetic-a", args.synthetic_graphs, 0)
        synthetic_set(synthetic, "synthetic-b", args.synthetic_graphs // 10, 1)
        p50 = aggregate_queries(synthetic, "synthetic-a", "synthetic-b")
    print(
        json.dumps(
            {
                "prompts": args.prompts,
                "seconds_per_graph": round(seconds_per_graph, 2),
                "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
                "bytes_per_graph": round(on_disk / len(slugs)),
                "aggregate_s": round(aggregate_s, 3),
                "ablation_seconds_per_prompt": round(ablation, 2),
                "ablation_diverged": ablation_run.circuit.diverged,
                "synthetic_graphs": args.synthetic_graphs,
                "synthetic_aggregate_s": round(synthetic_s, 2),
                "aggregate_p50_ms": round(p50, 1),
            }
        )
    )


if __name__ == "__main__":
    main()

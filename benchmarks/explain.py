"""Explanations and their scores with the embedded explainer, on a store `make demo` built.

Prints one JSON line: how many features of one layer were explained and scored per minute, the mean
detection and fuzzing accuracy the 135M explainer (also the scorer) reaches on held-out windows (chance
0.5), and, unless --no-sweep, the seconds of a sparsity sweep (5 k values x 3 seeds) on that layer, and
with --sweep-explain N the seconds and scores of a sweep whose every point has its N densest latents
explained and scored. Its results land in the store like the CLI's (tables explanations,
explanation_scores, sweeps; the layer's dictionaries row gets the summary).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

# benchmarks/query.py would shadow the `query` package when this runs as a script
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]

import polars as pl  # noqa: E402

from circuitdb.explanations.explain import ChatScorer, explain_features, score_explanations  # noqa: E402
from circuitdb.project import Project  # noqa: E402
from circuitdb.store.sweeps import summary  # noqa: E402
from circuitdb.sweeps import PointExplanations, sweep_layer  # noqa: E402
from query.questions import top_features  # noqa: E402


def _rounded(value: object) -> object:
    return round(value, 3) if isinstance(value, float) else value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default="store")
    parser.add_argument("--layer", type=int, default=12)
    parser.add_argument("--features", type=int, default=100)
    parser.add_argument("--no-sweep", action="store_true")
    parser.add_argument("--sweep-explain", type=int, default=0, help="latents explained per point of a k=16,64 sweep")
    args = parser.parse_args()

    project = Project.open(Path(args.store) / "circuitdb.effective.yaml", {"store": args.store}).built()
    config, store = project.config, project.store
    chosen = [row[0] for row in top_features(store, args.layer, "density", args.features).rows]
    lm, corpus = project.model, project.corpus
    explainer = project.explainer("embedded")
    started = time.perf_counter()
    explanations = explain_features(store, explainer, chosen)
    explained = time.perf_counter() - started
    scores = score_explanations(store, lm, corpus, ChatScorer(explainer), explanations)
    total = time.perf_counter() - started
    accuracy = scores.group_by("method").agg(pl.col("accuracy").mean(), pl.len().alias("n"))
    means = {row["method"]: (round(row["accuracy"], 3), row["n"]) for row in accuracy.iter_rows(named=True)}
    result = {
        "layer": args.layer,
        "features": len(chosen),
        "explain_seconds": round(explained, 1),
        "features_per_min": round(60 * len(chosen) / total, 2),
        "detection_acc": means.get("detection", (None, 0))[0],
        "detection_features": means.get("detection", (None, 0))[1],
        "fuzzing_acc": means.get("fuzzing", (None, 0))[0],
        "fuzzing_features": means.get("fuzzing", (None, 0))[1],
        "example": explanations.select("feature_id", "explanation").head(3).rows(),
    }
    if not args.no_sweep:
        started = time.perf_counter()
        sweep_layer(store, lm, corpus, config.dictionaries, args.layer, [8, 16, 32, 64, 128], [0, 1, 2])
        result["sweep_seconds"] = round(time.perf_counter() - started, 1)
    if args.sweep_explain:
        started = time.perf_counter()
        explain = PointExplanations(explainer, args.sweep_explain)
        rows = sweep_layer(store, lm, corpus, config.dictionaries, args.layer, [16, 64], [0, 1], [False, True], explain)
        result["sweep_explain_seconds"] = round(time.perf_counter() - started, 1)
        shown = ("skip", "k", "fvu_excl_pos0", "detection_acc", "detection_acc_ci95", "fuzzing_acc")
        result["sweep_points"] = [{key: _rounded(point[key]) for key in shown} for point in summary(rows).to_dicts()]
    store.push()
    print(json.dumps(result))


if __name__ == "__main__":
    main()

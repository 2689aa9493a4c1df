"""A store on object storage vs a local folder: harvest, training and queries, on the embedded model.

Prints one JSON line. Starts its own S3-compatible server (moto, on 127.0.0.1) unless AWS_ENDPOINT_URL is
set. The two stores do the same work in alternation:
- harvest: `harvest.layers` of one layer into the store (on S3: the mirror, then the upload);
- train: that layer's transcoder (on S3 by a machine that has none of the shards: a fresh mirror that streams
  them in the background, then uploads the dictionary);
- query: three typical questions, each as a CLI call would ask it (the store opened, on S3 pulled, then SQL).
Ratios are S3 over local: throughput for harvest and training (targets >= 0.8), p50 latency for queries (<= 2).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

# benchmarks/query.py would shadow the `query` package; the repository root holds the tests' servers
sys.path[:] = [str(Path(__file__).parents[1])] + [
    p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()
]

from circuitdb.config import CorpusConfig, DictionariesConfig, HarvestConfig, TrainConfig  # noqa: E402
from circuitdb.corpus import load_stored_corpus, store_corpus, tokenize_corpus  # noqa: E402
from circuitdb.dictionaries.pipeline import build_layer_dictionary  # noqa: E402
from circuitdb.harvest import harvest_layers  # noqa: E402
from circuitdb.models import load_model  # noqa: E402
from circuitdb.project import Project  # noqa: E402
from circuitdb.store import Store  # noqa: E402
from query.engine import run_sql  # noqa: E402
from tests.servers import start_s3_server  # noqa: E402

QUESTIONS = [
    "select layer, fvu, fvu_excl_pos0, l0, dead_frac from dictionaries order by layer",
    "select split, count(*) shards, sum(n_tokens) tokens from activation_shards group by split",
    "select count(*) from corpus_blocks",
]


def _local_s3() -> subprocess.Popen | None:
    if os.environ.get("AWS_ENDPOINT_URL"):
        return None
    endpoint, server = start_s3_server()
    os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="bench")
    os.environ.update(AWS_SECRET_ACCESS_KEY="bench", AWS_REGION="us-east-1")
    return server


def _timed(work) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def _built(location: str) -> Store:
    """What a query opens: the project's store, pulled and checked to hold tables."""
    return Project.open(overrides={"store": location}).built().store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer", type=int, default=12)
    parser.add_argument("--tokens", type=int, default=65_536, help="corpus tokens harvested")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20, help="calls per query")
    args = parser.parse_args()

    server = _local_s3()
    import boto3

    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    scratch = Path(tempfile.mkdtemp(prefix="circuitdb-bench-store-"))
    try:
        lm = load_model("embedded")
        corpus = tokenize_corpus(lm, CorpusConfig(max_tokens=args.tokens))
        harvest_cfg = HarvestConfig(layers=[args.layer])
        dictionaries = DictionariesConfig(train=dataclasses.replace(TrainConfig(), epochs=args.epochs))
        locations = {"local": str(scratch / "store"), "s3": f"s3://{bucket}/store"}
        seconds: dict[str, dict[str, float]] = {name: {} for name in locations}
        for name, location in locations.items():
            os.environ["CIRCUITDB_CACHE"] = str(scratch / f"{name}-writer")
            store = Store(location)
            store_corpus(store, corpus, lm.name, 0)
            seconds[name]["harvest"] = _timed(
                lambda store=store: (harvest_layers(store, lm, corpus, [args.layer], harvest_cfg, False), store.push())
            )
            os.environ["CIRCUITDB_CACHE"] = str(scratch / f"{name}-trainer")  # on S3: a machine with no shards
            trainer = Store(location)
            seconds[name]["train"] = _timed(
                lambda trainer=trainer: (
                    trainer.pull(),
                    build_layer_dictionary(
                        trainer, lm, load_stored_corpus(trainer, corpus.name), args.layer, dictionaries, False
                    ),
                    trainer.push(),
                )
            )
            os.environ["CIRCUITDB_CACHE"] = str(scratch / f"{name}-reader")
            latencies = []
            for _ in range(args.repeats):
                for question in QUESTIONS:
                    latencies.append(_timed(lambda q=question, at=location: run_sql(_built(at), q)))
            seconds[name]["query_p50"] = statistics.median(latencies)
        tokens = corpus.blocks.numel()
        print(
            json.dumps(
                {
                    "layer": args.layer,
                    "tokens": tokens,
                    "harvest_local_s": round(seconds["local"]["harvest"], 2),
                    "harvest_s3_s": round(seconds["s3"]["harvest"], 2),
                    "harvest_ratio": round(seconds["local"]["harvest"] / seconds["s3"]["harvest"], 3),
                    "train_local_s": round(seconds["local"]["train"], 2),
                    "train_s3_s": round(seconds["s3"]["train"], 2),
                    "train_ratio": round(seconds["local"]["train"] / seconds["s3"]["train"], 3),
                    "query_p50_local_ms": round(1000 * seconds["local"]["query_p50"], 1),
                    "query_p50_s3_ms": round(1000 * seconds["s3"]["query_p50"], 1),
                    "query_p50_ratio": round(seconds["s3"]["query_p50"] / seconds["local"]["query_p50"], 3),
                }
            )
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if server is not None:
            server.terminate()


if __name__ == "__main__":
    main()

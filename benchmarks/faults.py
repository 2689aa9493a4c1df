"""Faults and load: the CLI against a store on a flaky object store, then the viewer under many clients.

    python benchmarks/faults.py [--rounds 8] [--viewer-seconds 60] [--clients 32]

A local S3 server (moto) sits behind a fault-injecting proxy (tests/fault_proxy.py). A fault-free build of a
tiny random model (built from a config: no download) gives the reference answers. Then each round runs a
command (`build` on its own prefix, or questions on the reference prefix) under one fault schedule: bursts
of resets, 503 SlowDowns with Retry-After, bodies cut short and a stall; a refused window (the server
going away and coming back with its data); or faults that outlast the retry budget. A command that
completes must answer as the reference (`completed_identical`); one that fails must end in one `error:`
line (`failed_cleanly`), leave the committed store clean for a new reader (`circuitdb check` from an
empty mirror: else `half_visible`) and complete identically when run again without faults (else
`data_lost`). Finally the viewer serves the reference store to `--clients` clients for `--viewer-seconds`
(benchmarks/viewer_load.py). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

# benchmarks/query.py would shadow the `query` package; the repository root holds the tests' helpers
sys.path[:] = [str(Path(__file__).parents[1])] + [
    p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()
]

import boto3  # noqa: E402

from benchmarks import viewer_load  # noqa: E402
from tests.fault_proxy import Fault, FaultProxy  # noqa: E402
from tests.servers import start_s3_server  # noqa: E402

CIRCUITDB = str(Path(sys.executable).parent / "circuitdb")
QUESTIONS = [
    ["sql", "select dictionary, layer, count(*) n, round(sum(density), 4) d from features group by all order by all"],
    ["sql", "select layer, round(fvu, 4) fvu, round(l0, 2) l0 from dictionaries order by layer"],
    ["sql", "select split, count(*) shards, sum(n_tokens) tokens from activation_shards group by split order by split"],
    ["sql", "select slug, n_nodes, n_nodes_pruned, n_edges_pruned from graphs order by slug"],
    ["search", "similar", "plt/1/0", "--k", "4"],
]
SCHEDULES = {
    "bursts": lambda: [
        Fault("slowdown", times=3, retry_after=0.5),
        Fault("reset", times=3),
        Fault("truncate", times=2, method="GET", min_bytes=1_000),
        Fault("stall", times=1, seconds=6),
    ],
    "refused_window": lambda: [],
    "outlasting_resets": lambda: [Fault("reset", times=None, method="PUT", min_bytes=20_000)],
    "outlasting_outage": lambda: [],
}
REFUSALS = {"refused_window": (4.0, 6.0), "outlasting_outage": (4.0, 40.0)}
"""Schedules that close the port: (seconds into the command, for how long)."""


def _tiny_model(folder: Path) -> Path:
    from tests.conftest import _build

    return _build("llama", folder / "model", n_layers=3)


def _config(folder: Path, uri: str, model: Path, corpus: Path) -> Path:
    config = folder / f"{uuid.uuid4().hex[:8]}.yaml"
    config.write_text(
        f"store: {uri}\nobject_store:\n  retry_seconds: 12\n  request_timeout: 3\n"
        f"model:\n  spec: {model}\n  device: cpu\n"
        f"corpus:\n  source: {corpus}\n  context: 16\n  max_tokens: 256\n"
        "dictionaries:\n  dictionary:\n    n_latents: 64\n    k: 4\n"
        "  train:\n    batch_size: 32\n    epochs: 4\n    warmup_steps: 2\n  ce_eval_blocks: 2\n"
    )
    return config


def _run(args: list[str], config: Path, cache: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CIRCUITDB, *args, "--config", str(config)],
        capture_output=True,
        text=True,
        env={**env, "CIRCUITDB_CACHE": str(cache)},
        timeout=900,
    )


def _answers(config: Path, cache: Path, env: dict) -> list[str] | str:
    """Every question's output from a fresh mirror, or the error line of the first question that failed."""
    outputs = []
    for question in QUESTIONS:
        done = _run([*question, "-f", "json"], config, cache / uuid.uuid4().hex, env)
        if done.returncode != 0:
            return done.stderr.strip().splitlines()[-1]
        outputs.append(done.stdout)
    return outputs


def _one_clean_line(done: subprocess.CompletedProcess) -> bool:
    lines = done.stderr.strip().splitlines()
    return done.returncode != 0 and bool(lines) and lines[-1].startswith("error:") and done.stderr.count("error:") == 1


def _clean_for_a_reader(config: Path, cache: Path, env: dict) -> bool:
    check = _run(["check"], config, cache / uuid.uuid4().hex, env)
    return check.returncode == 0 and "0 damaged or missing" in check.stdout + check.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--viewer-seconds", type=float, default=60)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    chooser = random.Random(args.seed)
    folder = Path(tempfile.mkdtemp(prefix="circuitdb-faults-"))
    endpoint, s3 = start_s3_server()
    proxy = FaultProxy(endpoint)
    env = dict(os.environ, AWS_ENDPOINT_URL=proxy.endpoint, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench")
    env["AWS_REGION"] = "us-east-1"
    boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="bench", aws_secret_access_key="bench"
    ).create_bucket(Bucket="faults")
    model = _tiny_model(folder)
    corpus = folder / "corpus.txt"
    corpus.write_text(" ".join(["The quick brown fox jumps over the lazy dog.", "def add(a, b): return a + b"] * 150))
    tally = Counter()
    try:
        reference_config = _config(folder, "s3://faults/reference", model, corpus)
        built = _run(["build"], reference_config, folder / "cache-reference", env)
        assert built.returncode == 0, built.stderr[-2000:]
        reference = _answers(reference_config, folder / "readers", env)
        assert isinstance(reference, list), f"the fault-free reference cannot be queried: {reference}"

        for round_ in range(args.rounds):
            schedule = list(SCHEDULES)[round_ % len(SCHEDULES)]
            command = "build" if round_ % 2 == 0 else "questions"
            config = (
                reference_config
                if command == "questions"
                else _config(folder, f"s3://faults/round-{round_}", model, corpus)
            )
            proxy.inject(*SCHEDULES[schedule]())
            if schedule in REFUSALS:
                after, lasting = REFUSALS[schedule]
                threading.Timer(after * chooser.uniform(0.5, 1.5), proxy.refuse, args=(lasting,)).start()
            cache = folder / f"cache-{round_}"
            if command == "build":
                done = _run(["build"], config, cache, env)
                ok = done.returncode == 0
            else:
                ok = isinstance(_answers(config, cache, env), list)
                done = None
            time.sleep(REFUSALS.get(schedule, (0, 0))[1] + 1 if not ok and schedule in REFUSALS else 0)
            proxy.clear()
            tally["commands"] += 1
            if ok:
                identical = _answers(config, folder / "readers", env) == reference
                tally["completed_identical" if identical else "data_lost"] += 1
                continue
            tally["failed_cleanly" if done is None or _one_clean_line(done) else "failed_unclearly"] += 1
            if command == "build" and not _clean_for_a_reader(config, folder / "readers", env):
                tally["half_visible"] += 1
            if command == "build":
                _run(["build"], config, cache, env)  # the same command again, no faults
            if _answers(config, folder / "readers", env) != reference:
                tally["data_lost"] += 1
    finally:
        proxy.stop()
        s3.terminate()

    reference_folder = folder / "cache-reference" / "faults" / "reference"  # the build's mirror: the whole store
    base, server = viewer_load.serve(str(reference_folder), str(reference_config))
    try:
        viewer = viewer_load.summary(viewer_load.measure(base, args.clients, args.viewer_seconds))
    finally:
        server.terminate()
        server.wait()
    print(
        json.dumps(
            {
                "faults_injected": dict(proxy.injected),
                "commands": tally["commands"],
                "completed_identical": tally["completed_identical"],
                "failed_cleanly": tally["failed_cleanly"],
                "failed_unclearly": tally["failed_unclearly"],
                "data_lost": tally["data_lost"],
                "half_visible": tally["half_visible"],
                **viewer,
            }
        )
    )


if __name__ == "__main__":
    main()

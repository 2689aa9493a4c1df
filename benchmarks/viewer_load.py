"""The viewer under load: `circuitdb serve` in its own process, many clients at once for a while.

    python benchmarks/viewer_load.py --store DIR [--clients 32] [--seconds 60]

Each client loops over a mix of what a researcher's browser asks for (the index, graph and feature pages, their
JSON, a static script); one more client types a text to search every second (runs the model: answered, or
turned away with 429 when the model is busy). Prints one JSON line: viewer_p50_ms, viewer_p99_ms and
viewer_errors over the page/API calls, requests, model_answered, model_refused. Also used by benchmarks/faults.py.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import NamedTuple

# benchmarks/query.py would shadow the `query` package; the repository root holds the tests' helpers
sys.path[:] = [str(Path(__file__).parents[1])] + [
    p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()
]

from tests.servers import free_port  # noqa: E402


class Load(NamedTuple):
    latencies_ms: list[float]
    errors: list[str]
    model_answered: int
    model_refused: int


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


def _mix(base: str) -> list[str]:
    """The URLs a researcher's browser asks for, by weight (from the store's own index)."""
    index = json.loads(_get(f"{base}/api/index"))
    slugs = [g["slug"] for g in index["graphs"]][:3]
    dictionary = index["dictionaries"][0]
    features = [f"{dictionary['name']}/{dictionary['layer']}/{i}" for i in range(20)]
    mix = [f"{base}/", f"{base}/api/index", f"{base}/static/common.js"]
    for slug in slugs:
        mix += [f"{base}/graph/{slug}", f"{base}/api/graph/{slug}"]
    for feature in features[:5]:
        mix += [f"{base}/feature/{feature}"]
    mix += [f"{base}/api/feature/{feature}" for feature in features]
    return mix


def _client(urls: list[str], until: float, seed: int, load: Load) -> None:
    chooser = random.Random(seed)
    while time.monotonic() < until:
        url = chooser.choice(urls)
        start = time.perf_counter()
        try:
            _get(url)
        except (urllib.error.URLError, OSError) as exc:
            load.errors.append(f"{url}: {exc}")
            continue
        load.latencies_ms.append((time.perf_counter() - start) * 1000)


def _typist(base: str, until: float, counts: list[int]) -> None:
    words = "the quick brown fox jumps over the lazy dog in Paris and Berlin".split()
    chooser = random.Random(7)
    while time.monotonic() < until:
        text = " ".join(chooser.choices(words, k=12))
        request = urllib.request.Request(
            f"{base}/api/search", json.dumps({"text": text}).encode(), {"Content-Type": "application/json"}
        )
        try:
            urllib.request.urlopen(request, timeout=60).read()
            counts[0] += 1
        except urllib.error.HTTPError as refused:
            counts[1 if refused.code == 429 else 2] += 1
        time.sleep(1.0)


def measure(base: str, clients: int, seconds: float) -> Load:
    """Drive the viewer at `base` with `clients` looping clients and one typist for `seconds`."""
    urls = _mix(base)
    load = Load([], [], 0, 0)
    until = time.monotonic() + seconds
    counts = [0, 0, 0]  # model answered, refused (429), failed
    threads = [threading.Thread(target=_client, args=(urls, until, seed, load)) for seed in range(clients)]
    threads.append(threading.Thread(target=_typist, args=(base, until, counts)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    load.errors.extend(f"model request failed ({n})" for n in range(counts[2]))
    return load._replace(model_answered=counts[0], model_refused=counts[1])


def serve(store: str, config: str | None) -> tuple[str, subprocess.Popen]:
    """`circuitdb serve` on a free port of 127.0.0.1, in its own process; returns its URL once it answers."""
    port = free_port()
    command = [str(Path(sys.executable).parent / "circuitdb"), "serve", "--store", store, "--port", str(port)]
    server = subprocess.Popen(command + (["--config", config] if config else []), stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            _get(f"{base}/api/index")
            return base, server
        except (urllib.error.URLError, OSError):
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                raise RuntimeError("circuitdb serve did not start") from None
            time.sleep(0.2)


def summary(load: Load) -> dict:
    ordered = sorted(load.latencies_ms)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] if ordered else None
    return {
        "requests": len(ordered),
        "viewer_p50_ms": round(statistics.median(ordered), 1) if ordered else None,
        "viewer_p99_ms": round(p99, 1) if p99 is not None else None,
        "viewer_errors": len(load.errors),
        "model_answered": load.model_answered,
        "model_refused": load.model_refused,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", required=True)
    parser.add_argument("--config", default=None, help="circuitdb.yaml naming the model (for the search client)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60)
    args = parser.parse_args()
    base, server = serve(args.store, args.config)
    try:
        load = measure(base, args.clients, args.seconds)
    finally:
        server.terminate()
        server.wait()
    print(json.dumps({"clients": args.clients, "seconds": args.seconds, **summary(load)}))


if __name__ == "__main__":
    main()

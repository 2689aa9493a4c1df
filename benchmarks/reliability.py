"""Reliability of the CLI and the store, probed the way a careless or adversarial user would.

    python benchmarks/reliability.py [--work DIR] [--skip-kills]

On a tiny store of the embedded model (layers 0-1, 8k tokens, small dictionaries), built here:
- bad_inputs / clean_errors: a fixed list of bad invocations of every command; clean = non-zero exit,
  exactly one `error:` line on stderr, no traceback, nothing written outside the store (the working
  folder stays empty) and the store's files unchanged;
- kills_resumed_identical: `circuitdb build` killed with SIGKILL at three moments (during the harvest,
  the training, the feature statistics), then run again to the end: the weights, shards and graphs are
  byte-identical to an uninterrupted build's, and the tables hold the same rows (timestamps and
  durations aside);
- corruptions_detected / corruptions_total: each kind of artifact (partition file, shard, manifest,
  dictionary weights and config, graph JSON) truncated and bit-flipped in a scratch copy: detected =
  `circuitdb check` names the file and the command that reads it fails with one line naming it;
- sql_p99_ms_4_concurrent / sql_p99_ms_single: `circuitdb sql` wall time, four at once vs alone.
Prints one JSON line; the failures are listed on stderr.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import polars as pl

CLI = [sys.executable, "-c", "from query.cli import main; main()"]
TINY = """\
model: {{spec: embedded, device: cpu}}
store: {store}
corpus: {{max_tokens: 8192, context: 128}}
harvest: {{layers: [0, 1]}}
dictionaries:
  dictionary: {{n_latents: 512, k: 16}}
  train: {{epochs: 1, batch_size: 256}}
  ce_eval_blocks: 4
attribution:
  prompts: ["The capital of France is Paris, and the capital of Germany is"]
"""
VOLATILE = ("created_at", "seconds", "elapsed")
"""Columns that differ between two identical builds (when, how long)."""


def run(args: list[str], cwd: Path, config: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    extra = ["--config", str(config)] if config is not None and "--config" not in args else []
    return subprocess.run(
        [*CLI, *args, *extra], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=_env(cwd)
    )


def _env(cwd: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}


def build_tiny(folder: Path) -> Path:
    """A config file for a tiny store in `folder`/store."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "circuitdb.yaml"
    config.write_text(TINY.format(store=folder / "store"))
    return config


def bad_invocations(store: Path, slug: str, scratch: Path) -> list[list[str]]:
    (scratch / "notdir").write_text("a file")
    (scratch / "full").mkdir(exist_ok=True)
    (scratch / "full" / "keep.txt").write_text("mine")
    (scratch / "bad.npy").write_text("not numpy")
    (scratch / "bad.yaml").write_text("store: [unclosed")
    s = ["--store", str(store)]
    feature_ids = ["plt", "plt/0", "plt/x/1", "plt/0/-1", "plt/0/99999", "nope/0/1", "plt/99/1", "/0/1", "plt//1"]
    return [
        *[["feature", "show", f, *s] for f in feature_ids],
        *[["search", "similar", f, *s] for f in feature_ids],
        *[["steer", "fox", "--feature", f, "--scale", "2", *s] for f in feature_ids],
        ["sql", "", *s],
        ["sql", "   ", *s],
        ["sql", "DROP VIEW corpora", *s],
        ["sql", "select 1; select 2", *s],
        ["sql", "COPY (select 1) TO 'x.csv'", *s],
        ["sql", "ATTACH 'x.db'", *s],
        ["sql", "INSTALL httpfs", *s],
        ["sql", "PRAGMA version", *s],
        ["sql", "SET threads = 1", *s],
        ["sql", "select * from read_csv('/etc/passwd')", *s],
        ["sql", "select * from nothing_here", *s],
        ["sql", "selec 1", *s],
        ["sql", "select 1", "-f", "xml", *s],
        ["sql", "CREATE TABLE t AS SELECT 1", *s],
        ["sql", "EXPORT DATABASE 'dump'", *s],
        ["sql", "with x as (delete from corpora returning *) select * from x", *s],
        ["feature", "show", "plt/0/1", "--exemplars", "-1", *s],
        ["feature", "show", "plt/0/1", "--exemplars", "10000000", *s],
        ["feature", "top", "--k", "0", *s],
        ["feature", "top", "--k", "-3", *s],
        ["feature", "top", "--k", "1000000000000", *s],
        ["feature", "top", "--layer", "999", *s],
        ["feature", "top", "--layer", "-1", *s],
        ["feature", "top", "--by", "foo", *s],
        ["search", "similar", "plt/0/1", "--k", "0", *s],
        ["search", "similar", "plt/0/1", "--k", "1000000000", *s],
        ["search", "similar", "plt/0/1", "--layer-min", "20", "--layer-max", "10", *s],
        ["search", "similar", "plt/0/1", "--min-density", "2", *s],
        ["search", "similar", "plt/0/1", "--max-density", "-1", *s],
        ["search", "similar", "plt/0/1", "--min-density", "0.5", "--max-density", "0.1", *s],
        ["search", "similar", *s],
        ["search", "similar", "plt/0/1", "--vector", str(scratch / "bad.npy"), *s],
        ["search", "similar", "--vector", str(scratch / "missing.npy"), *s],
        ["search", "similar", "--vector", str(scratch / "bad.npy"), *s],
        ["search", "text", "", *s],
        ["search", "text", "   ", *s],
        ["search", "text", "fox", "--k", "0", *s],
        ["search", "text", "fox", "--name", "nope", *s],
        ["graph", "show", "no-such-graph", *s],
        ["graph", "show", slug, "--depth", "-1", *s],
        ["graph", "show", slug, "--width", "0", *s],
        ["graph", "show", slug, "--depth", "1000", *s],
        ["graph", "edges", slug, *s],
        ["graph", "edges", slug, "--from", "a", "--to", "b", *s],
        ["graph", "edges", slug, "--to", "no-node", *s],
        ["graph", "edges", slug, "--to", "x", "--k", "0", *s],
        ["graph", "edges", "no-such-graph", "--to", "x", *s],
        ["graph", "export", slug, "--out", str(scratch / "missing" / "g.json"), *s],
        ["graph", "export", slug, "--out", str(scratch / "full"), *s],
        ["graph", "export", "no-such-graph", "--out", str(scratch / "g.json"), *s],
        ["graph", "build", "", *s],
        ["graph", "build", "   ", *s],
        ["graph", "build", "fox", "--memory-gb", "0", *s],
        ["graph", "build", "fox", "--memory-gb", "0.000001", *s],
        ["graph", "build", "fox", "--max-feature-nodes", "0", *s],
        ["graph", "build", "fox", "--transcoders", str(scratch / "missing"), *s],
        ["graph", "build", "fox", "--transcoders", str(scratch / "full"), *s],
        ["dictionary", "export", "--out", str(scratch / "notdir"), *s],
        ["dictionary", "export", "--out", str(scratch / "full"), *s],
        ["dictionary", "export", "--out", str(scratch / "missing" / "deeper"), *s],
        ["dictionary", "export", "--out", str(scratch / "e1"), "--format", "bogus", *s],
        ["dictionary", "export", "--out", str(scratch / "e2"), "--layer", "999", *s],
        ["dictionary", "export", "--out", str(scratch / "e3"), "--name", "nope", *s],
        ["dictionary", "export", "--out", str(scratch / "e4"), "--format", "saelens", *s],
        ["dictionary", "import", str(scratch / "missing"), *s],
        ["dictionary", "import", str(scratch / "full"), *s],
        ["dictionary", "import", str(scratch / "full"), "--format", "bogus", *s],
        ["dictionary", "import", str(scratch / "full"), "--hook", "bogus", *s],
        ["dictionary", "import", str(scratch / "notdir"), *s],
        ["steer", "fox", *s],
        ["steer", "fox", "--feature", "plt/0/1", "--scale", "2", "--set", "1", *s],
        ["steer", "fox", "--feature", "plt/0/1", "--positions", "a,b", *s],
        ["steer", "fox", "--feature", "plt/0/1", "--positions", "999", *s],
        ["steer", "fox", "--feature", "plt/0/1", "--generate", "-1", *s],
        ["steer", "", "--feature", "plt/0/1", *s],
        ["build", "--layers", "0,,1", *s],
        ["build", "--layers", "99", *s],
        ["build", "--layers", "x", *s],
        ["build", "--device", "foo", *s],
        ["build", "--model", str(scratch / "missing.gguf"), *s],
        ["build", "--model", str(scratch / "full"), *s],
        ["build", "--max-tokens", "0", *s],
        ["build", "--config", str(scratch / "missing.yaml")],
        ["build", "--config", str(scratch / "bad.yaml")],
        ["ui", "--port", "0", *s],
        ["ui", "--port", "70000", *s],
        ["check", "--store", str(scratch / "missing")],
        ["tables", "--store", str(scratch / "missing")],
        ["sql", "select 1", "--store", str(scratch / "notdir")],
        ["graph", "list", "--store", str(scratch / "missing")],
        ["no-such-command"],
        ["sql", "select 1", "--bogus", *s],
        ["feature", "show"],
        ["graph"],
        ["--store", str(store), "sql"],
    ]


def is_clean(result: subprocess.CompletedProcess) -> bool:
    """A non-zero exit whose stderr ends in its only `error:` line (an estimate or progress printed before
    it is fine), no traceback, nothing on stdout; or the help, for a command given no arguments."""
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    if result.returncode != 0 and not lines:
        return result.stdout.lstrip().startswith(("Usage", "╭")) or "Usage:" in result.stdout[:200]
    return (
        result.returncode != 0
        and len(errors) == 1
        and lines[-1] == errors[0]
        and "Traceback" not in result.stderr
        and result.stdout.strip() == ""
    )


def tree_digest(store: Path) -> dict[str, str]:
    """Digest of every artifact, tables by content without their volatile columns."""
    digests = {}
    for path in sorted(store.rglob("*")):
        rel = path.relative_to(store)
        if not path.is_file() or any(p.startswith(".") for p in rel.parts) or rel.parts[0] in ("vectors", ".dagster"):
            continue
        if rel.parts[0] == "tables":
            frame = pl.read_parquet(path)
            frame = frame.drop([c for c in frame.columns if c in VOLATILE or c.endswith("_seconds")])
            rows = sorted(repr(row) for row in frame.rows())
            digests[str(rel)] = hashlib.sha256("\n".join([*frame.columns, *rows]).encode()).hexdigest()
        elif rel.parts[0] in ("activations", "dictionaries", "graphs") and rel.name != "manifest.json":
            data = path.read_bytes()
            if rel.parts[0] == "graphs":
                document = json.loads(data)
                document.get("metadata", {}).pop("created_at", None)
                data = json.dumps(document, sort_keys=True).encode()
            if rel.name == "config.json":
                document = json.loads(data)
                for key in VOLATILE + ("train_seconds",):
                    document.pop(key, None)
                data = json.dumps(document, sort_keys=True).encode()
            digests[str(rel)] = hashlib.sha256(data).hexdigest()
    return digests


def kill_and_resume(work: Path, reference: dict[str, str], moment: str, marker: str) -> bool:
    """Start a build, SIGKILL it once `marker` (a glob under the store) exists, build again: identical?"""
    config = build_tiny(work / f"kill-{moment}")
    store = work / f"kill-{moment}" / "store"
    process = subprocess.Popen(
        [*CLI, "build", "--config", str(config)],
        cwd=config.parent,
        env=_env(config.parent),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 900
    while process.poll() is None and time.time() < deadline and not list(store.glob(marker)):
        time.sleep(0.05)
    killed = process.poll() is None
    if killed:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    finished = run(["build"], config.parent, config, timeout=1800)
    same = finished.returncode == 0 and tree_digest(store) == reference
    if not same:
        diff = {k for k in set(reference) | set(tree_digest(store)) if reference.get(k) != tree_digest(store).get(k)}
        print(f"kill during {moment} (killed={killed}): differs in {sorted(diff)[:8]}", file=sys.stderr)
    return same


def corruptions(work: Path, store: Path, slug: str) -> tuple[int, int]:
    """(detected, total) over truncation and bit flips of each artifact kind, each in a fresh copy."""
    kinds = {
        "partition": ("tables/features/*.parquet", ["sql", "select count(*) from features"]),
        "shard": ("activations/*-train/mlp_in.0/shard-*.safetensors", None),
        "manifest": ("activations/*-train/mlp_in.0/manifest.json", None),
        "weights": ("dictionaries/plt/layer_1/weights.safetensors", ["dictionary", "export", "--out", "OUT"]),
        "dictionary config": ("dictionaries/plt/layer_1/config.json", ["dictionary", "export", "--out", "OUT"]),
        "graph": ("graphs/*.json", ["graph", "export", slug, "--out", "OUT.json"]),
    }
    detected = total = 0
    for kind, (pattern, reader) in kinds.items():
        for damage in ("truncate", "flip"):
            copy = work / f"damaged-{kind.replace(' ', '-')}-{damage}"
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(store, copy / "store")
            target = sorted((copy / "store").glob(pattern))[0]
            data = bytearray(target.read_bytes())
            if damage == "truncate":
                data = data[: len(data) // 2]
            else:
                data[len(data) // 2] ^= 0x04
            target.write_bytes(bytes(data))
            rel = str(target.relative_to(copy / "store"))
            checked = run(["check", "--store", str(copy / "store"), "-f", "json"], copy)
            found = checked.returncode == 1 and rel in checked.stdout
            if reader is not None:
                args = [a.replace("OUT", str(copy / "out")) for a in reader]
                read = run([*args, "--store", str(copy / "store")], copy)
                found = found and is_clean(read) and rel in read.stderr
            total += 1
            detected += found
            if not found:
                print(f"corruption not detected: {kind} {damage} ({rel})", file=sys.stderr)
    return detected, total


def concurrency(store: Path, cwd: Path, rounds: int = 12) -> tuple[float, float]:
    query = ["sql", "select layer, count(*) from features group by layer", "--store", str(store)]

    def timed() -> float:
        start = time.perf_counter()
        run(query, cwd)
        return (time.perf_counter() - start) * 1000

    single = [timed() for _ in range(rounds)]
    with ThreadPoolExecutor(4) as pool:
        together = [t for _ in range(rounds) for t in pool.map(lambda _: timed(), range(4))]
    return _p99(single), _p99(together)


def _p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--skip-kills", action="store_true", help="leave out the SIGKILL-and-resume builds")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="circuitdb-reliability-"))
    config = build_tiny(work / "reference")
    built = run(["build"], config.parent, config, timeout=1800)
    if built.returncode != 0:
        sys.exit(f"the reference build failed: {built.stderr.strip().splitlines()[-1:]}")
    store = work / "reference" / "store"
    reference = tree_digest(store)
    slug = pl.read_parquet(sorted((store / "tables" / "graphs").glob("*.parquet"))[0])["slug"][0]

    cwd = work / "cwd"
    cwd.mkdir(exist_ok=True)
    scratch = work / "scratch"
    scratch.mkdir(exist_ok=True)
    before = tree_digest(store)
    invocations = bad_invocations(store, slug, scratch)
    clean = 0
    for invocation in invocations:
        result = run(invocation, cwd)
        if is_clean(result) and not any(cwd.iterdir()):
            clean += 1
        else:
            print(f"not clean: {invocation} → rc {result.returncode}: {result.stderr.strip()[-300:]}", file=sys.stderr)
    unchanged = tree_digest(store) == before

    result = {"bad_inputs": len(invocations), "clean_errors": clean, "store_unchanged": unchanged}
    if not args.skip_kills:
        moments = {
            "harvest": "activations/*/*/shard-*",
            "training": "dictionaries/*/layer_0/weights.safetensors",
            "features": "tables/features/*.parquet",
        }
        result["kills_resumed_identical"] = sum(kill_and_resume(work, reference, m, g) for m, g in moments.items())
        result["kills"] = len(moments)
    detected, total = corruptions(work, store, slug)
    result |= {"corruptions_detected": detected, "corruptions_total": total}
    single, together = concurrency(store, cwd)
    result |= {"sql_p99_ms_single": round(single, 1), "sql_p99_ms_4_concurrent": round(together, 1)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()

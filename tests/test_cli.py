"""The CLI end to end on a tiny model, and one clear line with a non-zero exit for every bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from circuitdb.config import DictionaryConfig
from circuitdb.dictionaries import SparseCoder
from circuitdb.dictionaries.formats import read_dictionaries
from circuitdb.dictionaries.formats.circuit_tracer import export_transcoders
from tests.conftest import upload_store


@pytest.fixture(params=["folder", "s3"])
def store_location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Every test taking it runs twice: on a store folder and on a store in an S3 bucket (a local server)."""
    return str(tmp_path / "store") if request.param == "folder" else request.getfixturevalue("s3_store")


@pytest.fixture
def project(tmp_path: Path, store_location: str, llama_dir: Path, text_file: Path, tiny_dictionaries: str) -> Path:
    file = tmp_path / "circuitdb.yaml"
    file.write_text(
        f"store: {store_location}\nmodel:\n  spec: {llama_dir}\n"
        f"corpus:\n  source: {text_file}\n  context: 16\n  max_tokens: 256\n" + tiny_dictionaries
    )
    return file


def test_build_then_query(project: Path, cli) -> None:
    c = ("--config", str(project))
    code, out, err = cli("build", *c)
    assert code == 0, err
    # quality, every_latent_has_a_row, files_intact × 4 stages; graph_validation + files_intact × 3 prompts
    assert "corpora: 1 rows" in out and "asset checks: 12 passed, 0 failed" in out, err
    code, out, _ = cli("tables", "--config", str(project), "--format", "json")
    assert code == 0 and {"corpora", "activation_shards", "corpus_blocks"} <= {r["table"] for r in json.loads(out)}
    code, out, _ = cli("sql", "select count(*) as n from corpora", "--config", str(project), "-f", "csv")
    assert (code, out) == (0, "n\r\n1\r\n")
    code, out, _ = cli(
        "sql",
        "select hook, sum(n_tokens) t from activation_shards group by hook order by hook",
        "--config",
        str(project),
        "-f",
        "json",
    )
    rows = json.loads(out)
    assert len(rows) == 2 * 3 and {r["t"] for r in rows} == {256 // 16 * 16}


@pytest.fixture
def built(built_store: Path, store_location: str, tmp_path: Path, llama_dir: Path) -> tuple[str, str]:
    """`--config` of a copy of the session's tiny store (commands that write may change it) and the tiny model;
    on S3, the copy is uploaded and read through a fresh mirror."""
    if store_location.startswith("s3://"):
        upload_store(built_store, store_location, tmp_path / "writer")
        store = store_location
    else:
        store = shutil.copytree(built_store, store_location)
    config = tmp_path / "circuitdb.yaml"
    config.write_text(f"store: {store}\nmodel:\n  spec: {llama_dir}\n")
    return ("--config", str(config))


def test_feature_show(built: tuple[str, str], cli) -> None:
    code, out, _ = cli(
        "sql", "select feature_id from features where not dead order by feature_id", "-f", "json", *built
    )
    live = [row["feature_id"] for row in json.loads(out)]
    code, out, err = cli("feature", "show", live[0], *built)
    assert code == 0 and out.startswith(live[0]) and "top exemplars" in out, err
    code, out, _ = cli("feature", "show", live[-1], "-f", "json", *built)
    shown = json.loads(out)
    assert shown["feature_id"] == live[-1] and shown["exemplars"]
    assert all(e["feature_id"] == live[-1] for e in shown["exemplars"])
    for bad, message in (("plt/1", "malformed feature id"), ("plt/1/9999", "unknown feature"), ("x/9/0", "unknown")):
        code, _, err = cli("feature", "show", bad, *built)
        assert code == 1 and message in err


def test_feature_top(built: tuple[str, str], cli) -> None:
    code, out, _ = cli("feature", "top", "--layer", "1", "--k", "3", "-f", "json", *built)
    top = json.loads(out)
    code, out, _ = cli(
        "sql",
        "select feature_id from features where layer = 1 and not dead order by density desc limit 3",
        "-f",
        "json",
        *built,
    )
    assert [row["feature_id"] for row in top] == [row["feature_id"] for row in json.loads(out)]


def test_search_similar(built: tuple[str, str], tmp_path: Path, cli) -> None:
    code, out, err = cli("search", "similar", "plt/1/0", "--k", "4", "--layer-min", "2", "-f", "json", *built)
    found = json.loads(out)
    assert code == 0 and len(found) == 4 and {f["layer"] for f in found} == {2}, err
    np.save(tmp_path / "v.npy", np.ones(3))
    code, _, err = cli("search", "similar", "--vector", str(tmp_path / "v.npy"), *built)
    assert code == 1 and "dimension 3" in err


def test_search_text(built: tuple[str, str], cli) -> None:
    code, out, err = cli("search", "text", "The quick brown fox", "--k", "5", "-f", "json", *built)
    pooled = json.loads(out)
    assert code == 0 and len(pooled) == 5 and len({r["feature_id"] for r in pooled}) == 5, err
    assert [r["relative"] for r in pooled] == sorted((r["relative"] for r in pooled), reverse=True)
    code, out, _ = cli("search", "text", "The quick brown fox", "--per-token", "--k", "2", "-f", "json", *built)
    per_token = json.loads(out)
    assert {r["position"] for r in per_token} == set(range(1, len(per_token) // 2 + 1))
    code, _, err = cli("search", "text", "   ", *built)
    assert code == 1 and "empty text" in err


def test_dictionary_export_then_graph_commands(built: tuple[str, str], tmp_path: Path, cli) -> None:
    out_dir = tmp_path / "exported"
    code, out, err = cli("dictionary", "export", "--out", str(out_dir), *built)
    assert code == 0, err
    assert read_dictionaries(out_dir).layers == [0, 1, 2]
    saes = ("--format", "saelens", "--layer", "1", "--out", str(tmp_path / "saes"))
    code, _, err = cli("dictionary", "export", *saes, *built)
    assert code == 1 and "SAELens format holds SAEs" in err
    _graph_commands(Path(built[1]), out_dir, cli)


def _graph_commands(project: Path, transcoders: Path, cli) -> None:
    """graph build/list/show/edges/export and steer on the built store; errors are one line."""
    config = ("--config", str(project))
    code, out, _ = cli("graph", "list", "-f", "json", *config)
    assert code == 0 and len(json.loads(out)) == 3  # the default prompts, built by `build`
    code, out, err = cli("graph", "build", "The quick brown fox jumps", "--format", "json", *config)
    assert code == 0 and "GB for the graph (every feature's row" in err, err
    built = json.loads(out.strip().splitlines()[-1])
    slug = built["slug"]
    code, out, _ = cli(
        "sql", f"SELECT n_nodes_pruned, replacement_score FROM graphs WHERE slug = '{slug}'", "-f", "json", *config
    )
    assert json.loads(out) == [{k: built[k] for k in ("n_nodes_pruned", "replacement_score")}]  # printed = stored
    assert built["n_nodes_pruned"] > 0
    code, out, err = cli(
        "graph", "build", "The quick brown fox jumps", "--transcoders", str(transcoders), "-f", "json", *config
    )
    imported = json.loads(out.strip().splitlines()[-1])
    assert code == 0 and imported["slug"] != slug and imported["n_active_features"] == built["n_active_features"], err
    code, out, err = cli("graph", "show", slug, *config)
    assert code == 0 and out.splitlines()[0].startswith(slug) and "output" in out and "├─" in out, err
    code, out, _ = cli(
        "sql", f"SELECT target FROM graph_edges WHERE slug = '{slug}' AND target LIKE '4_%'", "-f", "json", *config
    )
    logit_node = json.loads(out)[0]["target"]
    code, out, err = cli("graph", "edges", slug, "--to", logit_node, "--k", "3", "-f", "json", *config)
    assert code == 0 and 0 < len(json.loads(out)) <= 3, err
    exported = project.parent / "graph.json"
    code, _, err = cli("graph", "export", slug, "--out", str(exported), *config)
    document = json.loads(exported.read_text())
    assert code == 0 and document["metadata"]["slug"] == slug and document["metadata"]["prompt_tokens"][0] == "<bos>"
    ids = {node["node_id"] for node in document["nodes"]}
    assert document["links"] and all(link["source"] in ids and link["target"] in ids for link in document["links"])
    code, out, _ = cli(
        "sql", f"SELECT source, target, weight FROM graph_edges WHERE slug = '{slug}'", "-f", "json", *config
    )
    stored = {(e["source"], e["target"]): e["weight"] for e in json.loads(out)}
    exported = {(link["source"], link["target"]): link["weight"] for link in document["links"]}
    assert exported.keys() == stored.keys() and all(exported[k] == pytest.approx(stored[k]) for k in stored)
    code, out, _ = cli("sql", f"SELECT node_id FROM graph_nodes WHERE slug = '{slug}'", "-f", "json", *config)
    assert ids == {row["node_id"] for row in json.loads(out)}
    code, out, err = cli(
        "steer",
        "The quick brown fox jumps",
        "--feature",
        "plt/1/0",
        "--set",
        "50",
        "--generate",
        "2",
        "-f",
        "json",
        *config,
    )
    steered = json.loads(out.strip().splitlines()[-1])
    assert code == 0 and steered["generated"] and steered["top_token_before"], err
    code, out, _ = cli("sql", "SELECT count(*) AS n FROM interventions", "-f", "json", *config)
    assert json.loads(out)[0]["n"] == 1
    narrow = project.parent / "narrow"
    export_transcoders({0: SparseCoder(DictionaryConfig(kind="plt", n_latents=8, k=2), 32, 32)}, narrow, "tiny")
    for args, message in (
        (["graph", "build", "  "], "the prompt is empty"),
        (["graph", "build", "fox " * 200], "the limit is 128"),  # the tiny model's context
        (["graph", "show", "no-such-graph"], "unknown graph"),
        (["graph", "edges", slug], "exactly one of --from"),
        (["graph", "edges", slug, "--from", "9_9_9"], "has no node"),
        (["graph", "build", "fox", "--transcoders", "/no/such/dir"], "does not exist"),
        (["graph", "build", "The quick brown fox", "--memory-gb", "0.00001"], "lower --max-feature-nodes"),
        (["graph", "build", "fox", "--memory-gb", "-1"], "attribution.memory_gb must be positive"),
        (["graph", "build", "fox", "--transcoders", str(narrow)], "width 32"),
        (["steer", "fox jumps", "--feature", "plt/1/9999", "--scale", "2"], "out of range"),
        (["steer", "fox jumps", "--feature", "plt/1"], "malformed feature id"),
    ):
        code, _, err = cli(*args, *config)
        lines = err.strip().splitlines()
        assert code == 1 and lines[-1].startswith("error: ") and message in lines[-1], (args, err)


@pytest.mark.parametrize(
    ("args", "extra_yaml", "message"),
    [
        (["build", "--model", "/no/such/model"], "", "model not found"),
        (["build", "--layers", "3"], "", "layer 3 out of range"),
        (["build"], "harvest:\n  hooks: [mlp_nope]\n", "unknown hook kind"),
        (["build"], "corpus:\n  source: EMPTY\n", "empty corpus"),
        (["build"], "corpus:\n  context: 4096\n  max_tokens: 8192\n", "exceeds the model's maximum"),
        (["sql", "SELEC 1"], "", "malformed SQL"),
        (["sql", "DELETE FROM corpora"], "", "DELETE statements are refused"),
        (["sql", "SELECT 1"], "store: /no/such/store\n", "store not found"),
        (["tables"], "store: /no/such/store\n", "store not found"),
        (["graph", "build", "hello there"], "", "no dictionaries named 'plt'"),
        (["graph", "list"], "", "no attribution graphs"),
    ],
)
def test_errors_are_one_line(
    args: list[str], extra_yaml: str, message: str, tmp_path: Path, llama_dir: Path, cli
) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("   ")
    (tmp_path / "store" / "tables" / "corpora").mkdir(parents=True)
    base = {"store": f"store: {tmp_path / 'store'}\n", "model": f"model:\n  spec: {llama_dir}\n"}
    if extra_yaml.startswith("store"):
        base["store"] = extra_yaml
    text = (
        base["store"]
        + base["model"]
        + ("" if extra_yaml.startswith("store") else extra_yaml.replace("EMPTY", str(empty)))
    )
    if "corpus" not in text:
        text += "corpus:\n  context: 16\n  max_tokens: 64\n"
    config = tmp_path / "circuitdb.yaml"
    config.write_text(text)
    code, _, err = cli(*args, "--config", str(config))
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err


def test_queries_start_without_loading_torch() -> None:
    """`sql`, `feature show` and `search similar` answer in ~0.5-1.5 s because the CLI module and the
    store don't import torch/transformers (2-3 s); the commands that run a model import them lazily."""
    probe = (
        "import sys, query.cli, circuitdb.store.vectors; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_graph_targets(built: tuple[str, str], cli) -> None:
    """A logit difference and a feature target through the CLI: stored, named, and bad ones one line each."""
    prompt = "The quick brown fox jumps"
    code, out, err = cli("graph", "build", prompt, "--target", " the", "-", " over", "-f", "json", *built)
    difference = json.loads(out.strip().splitlines()[-1])
    assert code == 0 and difference["target"] == "difference ' the' - ' over'", err
    assert difference["top_logits"] == ["' the' - ' over'"]
    code, out, err = cli("graph", "build", prompt, "--target-feature", "plt/2/3@4", "-f", "json", *built)
    feature = json.loads(out.strip().splitlines()[-1])
    assert code == 0 and feature["target"] == "feature plt/2/3@4" and feature["slug"] != difference["slug"], err
    code, out, _ = cli("sql", "SELECT slug, target FROM graphs ORDER BY created_at", "-f", "json", *built)
    stored = {row["slug"]: row["target"] for row in json.loads(out)}
    assert stored[difference["slug"]] == difference["target"] and stored[feature["slug"]] == feature["target"]
    code, out, err = cli("graph", "show", difference["slug"], *built)
    assert code == 0 and "target: difference ' the' - ' over'" in out, err
    for args, message in (
        (["--target", " the", "--target-feature", "plt/1/2@3"], "one kind of target"),
        (["--target", " the quick"], "exactly one token"),
        (["--target", " the", "-"], "a logit difference is"),
        (["--target-feature", "plt/9/1@2"], "no transcoder reads layer 9"),
        (["--target-vector", "/no/such.npy"], "no such file"),
    ):
        code, _, err = cli("graph", "build", prompt, *args, *built)
        lines = err.strip().splitlines()
        assert code == 1 and lines[-1].startswith("error: ") and message in lines[-1], (args, err)

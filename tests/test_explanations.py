"""Explanations written by a chat model (local, or through an OpenAI-compatible endpoint), stored with their
explainer and prompt version, and scored on held-out windows."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import polars as pl
import pytest
import torch
import uvicorn

from circuitdb.corpus import load_stored_corpus
from circuitdb.dictionaries.stored import stored_dictionary
from circuitdb.explanations.chat import EndpointChatModel, LocalChatModel
from circuitdb.explanations.explain import (
    PROMPT_VERSION,
    ChatScorer,
    densest_live,
    explain_and_score_coder,
    explain_features,
    explanation_prompt,
    held_out,
    held_out_samples,
    hook_activations,
    score_explanations,
    summarize_in_dictionaries,
)
from circuitdb.explanations.scoring import Sample
from circuitdb.models import capture, load_model, resolve_hooks
from circuitdb.store import Store, read_table
from query.explainer_endpoint import make_app
from tests.conftest import Always
from tests.servers import free_port


@pytest.fixture
def store(built_store: Path, tmp_path: Path) -> Store:
    return Store(shutil.copytree(built_store, tmp_path / "store"))


def _live(store: Store, layer: int, n: int) -> list[str]:
    features = read_table(store, "features").filter((pl.col("layer") == layer) & ~pl.col("dead"))
    return features.sort("density", descending=True)["feature_id"].head(n).to_list()


def test_the_prompt_marks_exactly_the_active_tokens() -> None:
    prompt = explanation_prompt([Sample(["The", " quick", " fox"], [0.0, 0.0, 2.5])], [" jumps", " runs"])
    assert "1. The quick<< fox>>" in prompt and "' jumps', ' runs'" in prompt


def test_explanations_are_stored_per_explainer_and_replaced_one_by_one(store: Store) -> None:
    chosen = _live(store, 1, 3)
    first = explain_features(store, Always("words about foxes\nand a second line"), chosen)
    assert first["explanation"].to_list() == ["words about foxes"] * 3  # one line
    again = explain_features(store, Always("dogs"), chosen[:1])
    rows = read_table(store, "explanations").sort("feature_id", "explainer")
    assert rows.height == 4 and set(rows["prompt_version"]) == {PROMPT_VERSION}
    assert set(rows.filter(pl.col("explainer") == "always-dogs")["feature_id"]) == {chosen[0]}
    newer = explain_features(store, Always("cats"), chosen[:1])
    assert read_table(store, "explanations").height == 5 and again.height == newer.height == 1
    with pytest.raises(Exception, match="no statistics"):
        explain_features(store, Always("x"), ["plt/1/9999"])


def test_held_out_windows_carry_the_latent_activations(store: Store, llama_dir: Path) -> None:
    lm = load_model(str(llama_dir), "cpu")
    corpus = load_stored_corpus(store, "default")
    coder, meta = stored_dictionary(store, "plt", 1)
    blocks = corpus.split("eval")
    acts = hook_activations(lm, meta["input_hook"], blocks)
    samples = held_out_samples(lm, coder, acts, blocks, [0, 5], window=5)
    with torch.no_grad():  # independently: one block, encoded in one piece
        acts = capture(lm, blocks[:1].long(), resolve_hooks(lm, [meta["input_hook"]]))[meta["input_hook"]][0]
        expected = coder.encode(acts)[1:6, 5].tolist()
    first = [s for s in samples[5][0] + samples[5][1] if s.tokens == lm.token_strings(blocks[0, 1:6].tolist())]
    assert first and first[0].activations == pytest.approx(expected, abs=1e-5)
    for active, silent in samples.values():
        assert all(any(v > 0 for v in s.activations) for s in active)
        assert all(all(v == 0 for v in s.activations) for s in silent)


def test_a_scorer_that_always_says_yes_detects_at_chance(store: Store, llama_dir: Path) -> None:
    chosen = _live(store, 1, 2)
    explanations = explain_features(store, Always("anything"), chosen)
    lm = load_model(str(llama_dir), "cpu")
    scores = score_explanations(
        store, lm, load_stored_corpus(store, "default"), ChatScorer(Always("Yes.")), explanations, window=4
    )
    detection = scores.filter(pl.col("method") == "detection")
    assert detection.height >= 1
    assert (detection["accuracy"] == 0.5).all() and (detection["recall"] == 1.0).all()  # balanced draws
    assert read_table(store, "explanation_scores").height == scores.height
    (row,) = read_table(store, "dictionaries").filter(pl.col("layer") == 1).iter_rows(named=True)
    fuzzing = scores.filter(pl.col("method") == "fuzzing")["accuracy"].to_list()
    assert row["explained_features"] == scores["feature_id"].n_unique() and row["detection_acc"] == 0.5
    assert row["fuzzing_acc"] == pytest.approx(sum(fuzzing) / len(fuzzing))
    assert row["scored_by"] == "always-anything → always-Yes."
    others = read_table(store, "dictionaries").filter(pl.col("layer") != 1)
    assert others["explained_features"].is_null().all() and others["fvu"].is_not_null().all()


def test_dictionaries_written_before_the_summary_columns_read_them_as_null(store: Store, llama_dir: Path, cli) -> None:
    import pyarrow.parquet as pq

    for path in store.partition_files("dictionaries"):  # as circuitdb wrote them before the summary existed
        pq.write_table(
            pq.read_table(path).drop(["explained_features", "detection_acc", "fuzzing_acc", "scored_by"]), path
        )
        (path.parent / f".{path.name}.sha256").unlink()
    rows = read_table(store, "dictionaries")
    assert rows.height == 3 and rows["detection_acc"].is_null().all() and rows["fvu"].is_not_null().all()
    explanations = explain_features(store, Always("anything"), _live(store, 2, 1))
    lm = load_model(str(llama_dir), "cpu")
    corpus = load_stored_corpus(store, "default")
    score_explanations(store, lm, corpus, ChatScorer(Always("Yes.")), explanations, window=4)
    code, out, err = cli(
        "sql", "SELECT layer, detection_acc FROM dictionaries ORDER BY layer", "--store", str(store.root), "-f", "json"
    )
    assert code == 0, err
    assert [(r["layer"], r["detection_acc"]) for r in json.loads(out)] == [(0, None), (1, None), (2, 0.5)]


def test_a_sweep_point_is_explained_as_its_stored_twin_would_be(store: Store, llama_dir: Path) -> None:
    """explain_and_score_coder on a stored dictionary writes the prompts `feature explain` writes for the
    same densest features: the in-memory statistics are the stored ones."""
    from circuitdb.dictionaries.data import ActivationSource

    lm = load_model(str(llama_dir), "cpu")
    corpus = load_stored_corpus(store, "default")
    coder, meta = stored_dictionary(store, "plt", 2)
    stored, in_memory = Always("Yes."), Always("Yes.")
    explain_features(store, stored, densest_live(store, "plt", 2, 3))
    source = ActivationSource(store.activation_run("default-train"), [meta["input_hook"]], [])
    data = held_out(lm, corpus, meta["input_hook"], window=4)
    summary = explain_and_score_coder(in_memory, lm, coder, (source, corpus.split("train")), data, 3, ("plt", 2))
    assert in_memory.prompts[:3] == stored.prompts  # then the scorer's prompts
    assert summary["explained_features"] == 3 and summary["detection_acc"] == 0.5  # always yes: chance


def test_an_openai_compatible_endpoint_answers_as_the_local_model(store: Store, llama_dir: Path, cli) -> None:
    local = LocalChatModel(load_model(str(llama_dir), "cpu"))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(make_app(local), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}/v1"
        prompts = ["Describe a fox.", "What is Python?"]
        assert EndpointChatModel(url).reply(prompts, 8) == local.reply(prompts, 8)  # greedy: the same words
        (chosen,) = _live(store, 2, 1)
        code, out, err = cli("feature", "explain", chosen, "--explainer", url, "--no-score", "--store", str(store.root))
        assert code == 0, err
        rows = read_table(store, "explanations")
        assert rows["explainer"].to_list() == [url] and rows["feature_id"].to_list() == [chosen]
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    code, _, err = cli("feature", "explain", chosen, "--explainer", url, "--store", str(store.root))
    assert code == 1 and err.strip().splitlines()[-1].startswith(f"error: explainer endpoint {url}")


def test_the_asset_explains_each_layers_densest_features(built_store: Path, tmp_path: Path, llama_dir: Path) -> None:
    import dagster as dg

    from assets.resources import ProjectResource
    from circuitdb.config import load_config
    from orchestration.definitions import build_definitions

    store = shutil.copytree(built_store, tmp_path / "store")
    config_file = tmp_path / "circuitdb.yaml"
    config_file.write_text(
        (built_store.parent / "circuitdb.yaml").read_text().replace(str(built_store), str(store))
        + f"explanations:\n  top_per_layer: 2\n  layers: [0, 2]\n  explainer: {llama_dir}\n"
    )
    project = ProjectResource(config_file=str(config_file))
    defs = build_definitions(load_config(config_file), project)
    (asset,) = [a for a in defs.assets if dg.AssetKey("explanations") in a.keys]
    tags = {"dagster/asset_partition_range_start": "0", "dagster/asset_partition_range_end": "2"}
    result = dg.materialize([asset], resources={"project": project}, tags=tags)
    assert result.success
    rows = read_table(Store(store), "explanations")
    expected = [fid for layer in (0, 2) for fid in _live(Store(store), layer, 2)]
    assert sorted(rows["feature_id"]) == sorted(expected) and set(rows["explainer"]) == {str(llama_dir)}
    (materialization, *_) = result.asset_materializations_for_node("explanations")
    scored = read_table(Store(store), "explanation_scores")
    assert materialization.metadata["explained"].value == 4
    summary = read_table(Store(store), "dictionaries").filter(pl.col("explained_features").is_not_null())
    assert sorted(summary["layer"]) == sorted({layer for layer in (0, 2) if layer in set(scored["layer"])})
    for layer in summary["layer"]:
        assert f"| {layer} | " in materialization.metadata["by_dictionary"].value
    assert scored["feature_id"].is_in(expected).all()


def test_the_feature_page_shows_the_latest_explanation_beside_the_label(store: Store, cli) -> None:
    (chosen,) = _live(store, 1, 1)
    code, out, _ = cli("feature", "show", chosen, "--store", str(store.root))
    assert code == 0 and "explanation:" not in out
    explain_features(store, Always("older words"), [chosen])
    explain_features(store, Always("newer words"), [chosen])
    code, out, _ = cli("feature", "show", chosen, "--store", str(store.root))
    assert code == 0 and "explanation: newer words  (always-newer words)" in out


def test_each_layers_summary_lands_in_its_own_dictionaries_row(tmp_path: Path) -> None:
    """12 layers written in shuffled order, scores at layers 1 and 10 only (whose partition names share a
    prefix): each summary is that layer's mean, in that layer's row; the rest stay null."""
    import random
    from datetime import UTC, datetime

    from circuitdb.store import TABLES, layer_partition, write_partition

    store = Store(tmp_path / "store")
    layers = list(range(12))
    random.Random(0).shuffle(layers)
    for layer in layers:
        row = {column: None for column in TABLES["dictionaries"].columns} | {"name": "plt", "layer": layer, "fvu": 0.5}
        write_partition(store, "dictionaries", layer_partition("plt", layer), pl.DataFrame([row]))
    accuracies = {
        1: {"detection": [0.6, 0.8], "fuzzing": [0.5, 0.7]},
        10: {"detection": [0.9, 1.0], "fuzzing": [0.4, 0.4]},
    }
    for layer, by_method in accuracies.items():
        rows = [
            {"feature_id": f"plt/{layer}/{i}", "dictionary": "plt", "layer": layer, "explainer": "e", "scorer": "s"}
            | {"method": method, "accuracy": accuracy, "precision": 0.0, "recall": 0.0, "f1": 0.0, "n": 20, "seed": 0}
            | {"created_at": datetime.now(UTC)}
            for method, values in by_method.items()
            for i, accuracy in enumerate(values)
        ]
        other_scorer = rows[0] | {"scorer": "another", "accuracy": 0.0}
        write_partition(store, "explanation_scores", layer_partition("plt", layer), pl.DataFrame([*rows, other_scorer]))
        summarize_in_dictionaries(store, "plt", layer, "e", "s")
    summary = read_table(store, "dictionaries").sort("layer")
    assert summary["layer"].to_list() == list(range(12)) and summary["fvu"].to_list() == [0.5] * 12
    for row in summary.iter_rows(named=True):
        if row["layer"] in accuracies:
            expected = accuracies[row["layer"]]
            assert row["explained_features"] == 2 and row["scored_by"] == "e → s"
            assert row["detection_acc"] == pytest.approx(sum(expected["detection"]) / 2)
            assert row["fuzzing_acc"] == pytest.approx(sum(expected["fuzzing"]) / 2)
        else:
            assert row["explained_features"] is None and row["detection_acc"] is None

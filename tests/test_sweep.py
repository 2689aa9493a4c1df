"""Sparsity sweeps: every k × seed trained and evaluated, and intervals that are what Student's t says."""

from __future__ import annotations

import json
import math
import shutil
import statistics
from pathlib import Path

import polars as pl
import pytest

from circuitdb.intervals import interval
from circuitdb.store.sweeps import summary
from tests.conftest import Always
from tests.servers import LOCAL


def test_the_interval_is_students_t() -> None:
    mean, half = interval([1.0, 2.0, 3.0])  # sd 1, n 3, t(0.975, 2 df) = 4.303
    assert mean == 2.0 and half == pytest.approx(4.303 / math.sqrt(3))
    assert interval([5.0]) == (5.0, 0.0)
    values = [0.31, 0.29, 0.35, 0.30, 0.33]
    assert interval(values)[1] == pytest.approx(2.776 * statistics.stdev(values) / math.sqrt(5))


def test_a_sweep_trains_every_point_and_summarizes_by_k(built_store: Path, tmp_path: Path, cli) -> None:
    store = shutil.copytree(built_store, tmp_path / "store")
    config = tmp_path / "circuitdb.yaml"
    config.write_text((built_store.parent / "circuitdb.yaml").read_text().replace(str(built_store), str(store)))
    code, out, err = cli(
        "dictionary", "sweep", "--layer", "1", "--k", "4,2", "--seeds", "2", "-f", "json", "--config", str(config)
    )
    assert code == 0, err
    table = json.loads(out)
    code, out, _ = cli(
        "sql", "SELECT skip, k, seed, fvu, l0 FROM sweeps ORDER BY k, seed", "-f", "json", "--config", str(config)
    )
    rows = pl.DataFrame(json.loads(out))
    assert rows.select("k", "seed").rows() == [(2, 0), (2, 1), (4, 0), (4, 1)]
    assert rows["l0"].to_list() == pytest.approx([2, 2, 4, 4])  # TopK: exactly k active on every token
    assert rows.filter(pl.col("k") == 2)["fvu"].n_unique() == 2  # the seeds train different dictionaries
    assert [entry["k"] for entry in table] == [2, 4] and all(entry["seeds"] == 2 for entry in table)
    expected = summary(rows.with_columns(**{m: pl.lit(0.0) for m in ("fvu_excl_pos0", "dead_frac", "delta_ce", "kl")}))
    assert [round(entry["fvu"], 4) for entry in table] == [round(v, 4) for v in expected["fvu"].to_list()]
    from starlette.testclient import TestClient

    from circuitdb.project import Project
    from query.viewer.app import make_app

    (swept,) = (
        TestClient(make_app(Project.open(overrides={"store": str(store)})), base_url=LOCAL)
        .get("/api/index")
        .json()["sweeps"]
    )
    assert (swept["dictionary"], swept["layer"]) == ("plt", 1)
    assert [p["fvu"] for p in swept["points"]] == pytest.approx([entry["fvu"] for entry in table])
    code, _, err = cli("dictionary", "sweep", "--layer", "1", "--k", "4,x", "--config", str(config))
    assert code == 1 and "--k must be comma-separated integers" in err
    code, _, err = cli("dictionary", "sweep", "--layer", "1", "--k", "999", "--config", str(config))
    assert code == 1 and "k must be in 1..64" in err


def test_transcoders_against_skip_transcoders_point_by_point(built_store: Path, tmp_path: Path, cli) -> None:
    from starlette.testclient import TestClient

    from circuitdb.project import Project
    from query.viewer.app import make_app

    store = shutil.copytree(built_store, tmp_path / "store")
    config = tmp_path / "circuitdb.yaml"
    config.write_text((built_store.parent / "circuitdb.yaml").read_text().replace(str(built_store), str(store)))
    c = ("--config", str(config))
    code, out, err = cli(
        "dictionary", "sweep", "--layer", "1", "--k", "4", "--seeds", "2", "--skip", "both", "-f", "json", *c
    )
    assert code == 0, err
    assert [(e["skip"], e["k"], e["seeds"]) for e in json.loads(out)] == [(False, 4, 2), (True, 4, 2)]
    sql = "SELECT skip, seed, created_at FROM sweeps ORDER BY skip, seed"
    first = pl.DataFrame(json.loads(cli("sql", sql, "-f", "json", *c)[1]))
    assert first.select("skip", "seed").rows() == [(False, 0), (False, 1), (True, 0), (True, 1)]
    code, _, err = cli("dictionary", "sweep", "--layer", "1", "--k", "4", "--seeds", "1", "--skip", "on", *c)
    assert code == 0, err
    second = pl.DataFrame(json.loads(cli("sql", sql, "-f", "json", *c)[1]))
    changed = [a != b for a, b in zip(first["created_at"], second["created_at"], strict=True)]
    assert changed == [False, False, True, False]  # only the re-run point was replaced
    curves = (
        TestClient(make_app(Project.open(overrides={"store": str(store)})), base_url=LOCAL)
        .get("/api/index")
        .json()["sweeps"]
    )
    assert [(s["layer"], s["skip"]) for s in curves] == [(1, False), (1, True)]


def test_the_sweep_asset_trains_one_point_per_partition_and_plots_the_sweep(
    built_store: Path, tmp_path: Path, llama_dir: Path
) -> None:
    import dagster as dg

    from assets.resources import ProjectResource
    from circuitdb.config import load_config
    from circuitdb.store import Store, read_table
    from orchestration.definitions import build_definitions

    store = shutil.copytree(built_store, tmp_path / "store")
    config_file = tmp_path / "circuitdb.yaml"
    config_file.write_text(
        (built_store.parent / "circuitdb.yaml").read_text().replace(str(built_store), str(store))
        + "sweep:\n  layer: 2\n  ks: [2, 4]\n  seeds: 2\n  compare_skip: true\n  explain_features: 1\n"
        + f"explanations:\n  explainer: {llama_dir}\n"
    )
    project = ProjectResource(config_file=str(config_file))
    defs = build_definitions(load_config(config_file), project)
    (asset,) = [a for a in defs.assets if dg.AssetKey("sweep") in a.keys]
    assert sorted(asset.partitions_def.get_partition_keys()) == ["2|0", "2|1", "4|0", "4|1"]
    for key in ("4|1", "2|0"):
        result = dg.materialize([asset], resources={"project": project}, partition_key=key)
        assert result.success
    rows = read_table(Store(store), "sweeps").sort("k", "skip")
    assert rows.select("layer", "k", "seed", "skip").rows() == [
        (2, 2, 0, False),
        (2, 2, 0, True),
        (2, 4, 1, False),
        (2, 4, 1, True),
    ]
    (materialization,) = result.asset_materializations_for_node("sweep")
    assert {"fvu_excl_pos0_by_k", "delta_ce_by_k", "points"} <= set(materialization.metadata)
    assert materialization.metadata["points"].value.count("skip transcoder |") == 2
    # the densest latent of every point explained; scored where the 16-token corpus has windows it is silent in
    assert rows["explained_features"].drop_nulls().to_list() in ([1, 1], [1, 1, 1], [1, 1, 1, 1])
    assert "| detection | fuzzing |" in materialization.metadata["explanation_scores"].value


def test_every_sweep_point_records_the_scores_of_its_explained_features(built_store: Path, tmp_path: Path) -> None:
    from circuitdb.config import load_config
    from circuitdb.corpus import load_stored_corpus
    from circuitdb.models import load_model
    from circuitdb.store import Store, read_table
    from circuitdb.sweeps import PointExplanations, sweep_layer

    store = Store(shutil.copytree(built_store, tmp_path / "store"))
    config = load_config(built_store.parent / "circuitdb.yaml")
    lm = load_model(config.model.spec, "cpu")
    corpus = load_stored_corpus(store, config.corpus.name)
    says_yes = Always("Yes.")
    explain = PointExplanations(says_yes, features=2, window=4)
    rows = sweep_layer(store, lm, corpus, config.dictionaries, 1, [4], [0, 1], None, explain, progress=False)
    stored = read_table(store, "sweeps").sort("seed")
    scored = stored["explained_features"].to_list()  # of 2 explained, those the tiny eval split could score
    assert scored == rows["explained_features"].to_list() and all(n in (1, 2) for n in scored)
    assert stored["detection_acc"].to_list() == [0.5, 0.5]  # a scorer that always says yes: chance, exactly
    assert sum("In one short line" in prompt for prompt in says_yes.prompts) == 4  # 2 features × 2 points
    (point,) = summary(stored).to_dicts()
    assert (point["detection_acc"], point["detection_acc_ci95"]) == (0.5, 0.0)
    assert point["fuzzing_acc"] == pytest.approx(statistics.fmean(stored["fuzzing_acc"].drop_nulls().to_list()))
    unexplained = sweep_layer(store, lm, corpus, config.dictionaries, 1, [2], [0], None, progress=False)
    assert unexplained["detection_acc"].is_null().all()
    assert summary(read_table(store, "sweeps").filter(pl.col("k") == 2))["detection_acc"].is_null().all()

"""The Dagster Definitions load, and both assets materialize on a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import polars as pl
import torch

from assets.dictionaries import dictionaries_quality
from assets.features import every_latent_has_a_row
from assets.partitions import prompt_partitions, prompt_set_partitions, set_prompt_partitions
from assets.resources import ProjectResource
from circuitdb.config import load_config
from circuitdb.dictionaries.formats import load_dictionary
from circuitdb.dictionaries.formats.circuit_tracer import read_clt
from circuitdb.project import Project
from circuitdb.store import Store, read_table
from circuitdb.store.vectors import feature_vector, nearest
from orchestration.build import RANGE_END, RANGE_START, build_all
from orchestration.definitions import build_definitions


def test_default_definitions_load() -> None:
    from orchestration.definitions import defs

    loaded = defs()  # lazy: nothing is read at import time
    dg.Definitions.validate_loadable(loaded)
    graph = loaded.resolve_asset_graph()
    assert {k.to_user_string() for k in graph.get_all_asset_keys()} == {
        "corpus_tokens",
        "activations",
        "dictionaries",
        "feature_stats",
        "exemplars",
        "feature_vectors",
        "explanations",
        "attribution_graphs",
        "set_graphs",
        "prompt_set_circuits",
        "sweep",
    }
    assert graph.get(dg.AssetKey("activations")).partitions_def.get_partition_keys() == [str(i) for i in range(30)]
    assert [s.name for s in loaded.sensors] == ["prompts_file_sensor", "prompt_sets_sensor", "set_circuits_sensor"]
    assert [s.name for s in loaded.schedules] == ["refresh_stale_graphs", "refresh_stale_sets"]
    described = [*loaded.sensors, *loaded.schedules]
    assert all(item.description for item in described)
    for node in graph.asset_nodes:
        assert node.description and node.group_name, node.key
    checks = [spec for asset in loaded.assets for spec in asset.check_specs]
    assert checks and all(spec.description for spec in checks)


def _project(tmp_path: Path, llama_dir: Path, text_file: Path, tiny_dictionaries: str) -> Path:
    file = tmp_path / "circuitdb.yaml"
    file.write_text(
        f"store: {tmp_path / 'store'}\nmodel:\n  spec: {llama_dir}\n  device: cpu\n"
        f"corpus:\n  source: {text_file}\n  context: 16\n  max_tokens: 320\n  eval_fraction: 0.25\n"
        "harvest:\n  hooks: [mlp_in, mlp_out, resid_post]\n  batch_size: 4\n" + tiny_dictionaries
    )
    return file


def test_materialize_corpus_and_activations(
    tmp_path: Path, llama_dir: Path, text_file: Path, tiny_dictionaries: str
) -> None:
    file = _project(tmp_path, llama_dir, text_file, tiny_dictionaries)
    config = load_config(file)
    project = ProjectResource(config_file=str(file))
    defs = build_definitions(config, project)
    per_set = (prompt_partitions, prompt_set_partitions, set_prompt_partitions)
    per_layer = [a for a in defs.assets if a.partitions_def not in per_set]
    assets = [a for a in per_layer if dg.AssetKey("sweep") not in a.keys]
    checks = [dictionaries_quality, every_latent_has_a_row]
    result = dg.materialize([*assets, *checks], resources={"project": project}, tags={RANGE_START: "0", RANGE_END: "2"})
    assert result.success
    store = Store(config.store)
    assert read_table(store, "corpora")["n_blocks"].to_list() == [20]
    shards = read_table(store, "activation_shards")
    assert sorted(shards["layer"].unique().to_list()) == [0, 1, 2]
    assert shards.group_by("hook", "split").agg(pl.col("n_tokens").sum())["n_tokens"].unique().sort().to_list() == [
        5 * 16,
        15 * 16,
    ]
    # one partition alone re-materializes only its layer's file, leaving the others as they were
    layer0 = store.table_file("activation_shards", "layer-000")
    layer1 = store.table_file("activation_shards", "layer-001")
    before = layer1.stat().st_mtime_ns
    single = dg.materialize(
        [a for a in assets if dg.AssetKey("activations") in a.keys], resources={"project": project}, partition_key="0"
    )
    assert single.success and layer1.stat().st_mtime_ns == before and layer0.is_file()
    dictionaries = read_table(store, "dictionaries").sort("layer")
    assert dictionaries["layer"].to_list() == [0, 1, 2] and (dictionaries["fvu_excl_pos0"] < 1.0).all()
    coder, meta = load_dictionary(store.root / dictionaries["path"][1])
    assert meta["input_hook"] == "mlp_in.1" and coder.cfg.n_latents == 64
    features = read_table(store, "features")
    assert features.height == 3 * 64 and set(features["layer"]) == {0, 1, 2}
    assert set(read_table(store, "exemplars")["feature_id"]) <= set(features["feature_id"])
    similar = nearest(store, feature_vector(store, "plt/1/5"), k=3, exclude="plt/1/5")
    assert similar.height == 3 and "plt/1/5" not in similar["feature_id"].to_list()
    assert {c.check_name for c in result.get_asset_check_evaluations()} == {"quality", "every_latent_has_a_row"}
    assert all(c.passed for c in result.get_asset_check_evaluations() if c.check_name == "every_latent_has_a_row")


def test_cross_layer_transcoder_asset(
    tmp_path: Path, llama_dir: Path, text_file: Path, tiny_dictionaries: str, cli
) -> None:
    file = _project(tmp_path, llama_dir, text_file, tiny_dictionaries)
    clt_yaml = "clt:\n  enabled: true\n  dictionary: {kind: clt, activation: relu, n_latents: 48, k: 4}\n"
    clt_yaml += "  train: {batch_size: 32, epochs: 2}\nattribution: {dictionaries: clt, prompts: []}\n"
    file.write_text(file.read_text() + clt_yaml)
    config = load_config(file)
    assert all(check.passed for check in build_all(Project(config)) if check.check_name != "quality")
    rows = read_table(Store(config.store), "dictionaries").filter(pl.col("kind") == "clt").sort("layer")
    assert rows["layer"].to_list() == [0, 1, 2] and rows["delta_ce"].n_unique() == 1
    clt, meta = load_dictionary(Store(config.store).root / rows["path"][0])
    assert meta["layers"] == [0, 1, 2] and clt.n_layers == 3
    code, _, err = cli("dictionary", "export", "--name", "clt", "--out", str(tmp_path / "ct"), "--config", str(file))
    assert code == 0, err
    exported = read_clt(tmp_path / "ct")
    x = torch.randn(5, 3, 64)
    with torch.no_grad():
        assert torch.allclose(exported(x)[0], clt(x)[0], atol=1e-5)
    code, out, err = cli("graph", "build", "The quick brown fox", "-f", "json", "--config", str(file))
    built = json.loads(out.strip().splitlines()[-1])
    assert code == 0 and built["n_nodes"] > 0, err
    nodes = read_table(Store(config.store), "graph_nodes").filter(pl.col("kind") == "feature")
    assert nodes["feature_id"].str.starts_with("clt/").all()


def test_build_all_runs_the_pipeline(
    tmp_path: Path, llama_dir: Path, text_file: Path, tiny_dictionaries: str, cli
) -> None:
    """Transcoders at layer 1 only: layers 0 and 2 are whole error nodes in every graph. On a random
    tiny model the tokens carry most of the influence, so the node threshold is raised to keep features."""
    overrides = {"harvest.layers": "1", "attribution.node_threshold": 0.95}
    config = load_config(_project(tmp_path, llama_dir, text_file, tiny_dictionaries), overrides)
    checks = build_all(Project(config))
    store = Store(config.store)
    shards = read_table(store, "activation_shards")
    assert set(shards["hook"]) == {"mlp_in.1", "mlp_out.1", "resid_post.1"}
    graphs = read_table(store, "graphs")
    assert graphs["prompt"].sort().to_list() == sorted(config.attribution.prompts)
    nodes = read_table(store, "graph_nodes")
    assert set(nodes.filter(pl.col("kind") == "feature")["layer"]) == {1}
    validations = [c for c in checks if c.check_name == "graph_validation"]
    assert len(validations) == 3 and all(c.passed for c in validations), [c.metadata for c in validations]
    assert {c.check_name for c in checks} == {"quality", "every_latent_has_a_row", "graph_validation", "files_intact"}
    intact = {c.asset_key.to_user_string() for c in checks if c.check_name == "files_intact" and c.passed}
    assert intact == {"corpus_tokens", "activations", "dictionaries", "feature_stats", "attribution_graphs"}
    slug = graphs["slug"][0]
    from orchestration.instance import project_instance

    records = project_instance(Store(config.store).root).fetch_materializations(
        dg.AssetKey("attribution_graphs"), limit=10
    )
    pages = {r.event_log_entry.asset_materialization.metadata["page"].value for r in records.records}
    assert pages == {f"http://127.0.0.1:8080/graph/{slug}" for slug in graphs["slug"]}
    code, out, err = cli(
        "sql",
        f"SELECT count(*) AS n FROM graph_edges WHERE slug = '{slug}'",
        "--format",
        "json",
        "--store",
        config.store,
    )
    assert code == 0 and json.loads(out)[0]["n"] == graphs["n_edges_pruned"][0], err


def test_prompts_file_sensor_adds_new_prompts(tmp_path: Path, llama_dir: Path, monkeypatch) -> None:
    from assets.attribution import configured_prompts
    from orchestration.sensors import prompts_file_sensor

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("The quick brown fox\n\nA second prompt\n")
    (tmp_path / "circuitdb.yaml").write_text(
        f"store: {tmp_path / 'store'}\nmodel:\n  spec: {llama_dir}\n"
        f"attribution:\n  prompts: []\n  prompts_file: {prompts}\n"
    )
    monkeypatch.chdir(tmp_path)
    instance = dg.DagsterInstance.ephemeral()
    result = prompts_file_sensor(dg.build_sensor_context(instance=instance))
    slugs = sorted(configured_prompts(load_config()))
    assert len(slugs) == 2 and sorted(r.partition_key for r in result.run_requests) == slugs
    instance.add_dynamic_partitions(prompt_partitions.name, slugs)
    assert isinstance(prompts_file_sensor(dg.build_sensor_context(instance=instance)), dg.SkipReason)
    prompts.write_text(prompts.read_text() + "A third prompt\n")
    (new,) = prompts_file_sensor(dg.build_sensor_context(instance=instance)).run_requests
    assert new.partition_key not in slugs


def test_build_evaluates_an_imported_set_instead_of_training_over_it(
    tmp_path: Path, llama_dir: Path, text_file: Path, tiny_dictionaries: str
) -> None:
    """A sparsify transcoder imported as `plt` at layer 1: build keeps its weights, adds held-out metrics,
    and computes its features like a trained set's (every latent of its own width gets a row)."""
    from safetensors.torch import save_file

    from circuitdb.dictionaries.formats import ReadHint, read_dictionaries
    from circuitdb.dictionaries.pipeline import import_dictionary_set
    from circuitdb.models import load_model

    config = load_config(
        _project(tmp_path, llama_dir, text_file, tiny_dictionaries), {"harvest.layers": "1", "attribution.prompts": []}
    )
    hook = tmp_path / "run" / "layers.1.mlp"
    hook.mkdir(parents=True)
    gen = torch.Generator().manual_seed(0)
    weights = {
        "encoder.weight": torch.randn(80, 64, generator=gen),
        "encoder.bias": torch.zeros(80),
        "W_dec": torch.randn(80, 64, generator=gen) * 0.1,
        "b_dec": torch.zeros(64),
    }
    save_file(weights, hook / "sae.safetensors")
    (hook / "cfg.json").write_text(json.dumps({"num_latents": 80, "k": 6, "transcode": True, "d_in": 64}))
    lm = load_model(str(llama_dir), device="cpu")
    store = Store(config.store)
    import_dictionary_set(store, lm, read_dictionaries(tmp_path / "run", hint=ReadHint(name="plt")))
    assert all(check.passed for check in build_all(Project(config)) if check.check_name == "every_latent_has_a_row")
    row = read_table(store, "dictionaries").row(0, named=True)
    assert (row["n_latents"], row["k"], row["train_tokens"]) == (80, 6, 0) and row["fvu"] is not None
    coder, meta = load_dictionary(store.root / row["path"])
    assert torch.equal(coder.W_enc, weights["encoder.weight"]) and meta["imported_format"] == "sparsify"
    assert read_table(store, "features").height == 80


def test_a_prompt_set_file_becomes_a_partition_that_builds_and_aggregates(
    built_store: Path, tmp_path: Path, monkeypatch
) -> None:
    """The sensor adds a partition per new set file; its run builds the set's graphs and aggregates them; a
    retrained dictionary makes the schedule ask for the set again."""
    import shutil

    store = Path(shutil.copytree(built_store, tmp_path / "store"))
    animals = tmp_path / "animals.jsonl"
    animals.write_text("\n".join(json.dumps({"prompt": f"The quick brown {a} jumps"}) for a in ("fox", "dog", "cat")))
    config = tmp_path / "circuitdb.yaml"
    text = (built_store.parent / "circuitdb.yaml").read_text().replace(str(built_store), str(store))
    config.write_text(text + f"attribution:\n  prompt_set_files: [{animals}]\n")
    monkeypatch.chdir(tmp_path)
    with dg.instance_for_test() as instance:
        _set_partition_builds(instance, store, config)


def _set_partition_builds(instance: dg.DagsterInstance, store: Path, config: Path) -> None:
    from datetime import UTC, datetime

    from assets.circuits import prompt_set_circuits, set_graphs
    from circuitdb.store import Store, read_table, write_partition
    from orchestration.schedules import refresh_stale_sets
    from orchestration.sensors import prompt_sets_sensor, set_circuits_sensor

    resources = {"project": ProjectResource(config_file=str(config))}
    found = prompt_sets_sensor(dg.build_sensor_context(instance=instance))
    (request,) = found.run_requests
    assert request.tags == {RANGE_START: "animals:0", RANGE_END: "animals:2"}  # the set's graphs: one run
    added = {r.partitions_def_name: r.partition_keys for r in found.dynamic_partitions_requests}
    prompts = [f"animals:{i}" for i in range(3)]
    assert added == {prompt_set_partitions.name: ["animals"], set_prompt_partitions.name: prompts}
    for name, keys in added.items():
        instance.add_dynamic_partitions(name, keys)
    assert isinstance(prompt_sets_sensor(dg.build_sensor_context(instance=instance)), dg.SkipReason)
    assert isinstance(set_circuits_sensor(dg.build_sensor_context(instance=instance)), dg.SkipReason)  # none built
    result = dg.materialize([set_graphs], instance=instance, tags=request.tags, resources=resources)
    assert result.success
    events = result.asset_materializations_for_node("set_graphs")
    assert sorted(e.partition for e in events) == ["animals:0", "animals:1", "animals:2"]
    assert events[0].metadata["graphs_built"].value == 3
    built = Store(store)
    assert read_table(built, "prompt_sets", partitions=["animals"])["slug"].null_count() == 0
    (aggregate,) = set_circuits_sensor(dg.build_sensor_context(instance=instance)).run_requests
    assert aggregate.partition_key == "animals"
    result = dg.materialize([prompt_set_circuits], instance=instance, partition_key="animals", resources=resources)
    (materialization,) = result.asset_materializations_for_node("prompt_set_circuits")
    assert materialization.metadata["graphs"].value == 3
    assert read_table(built, "circuit_sets", partitions=["animals"])["graphs"][0] == 3
    assert isinstance(set_circuits_sensor(dg.build_sensor_context(instance=instance)), dg.SkipReason)  # up to date
    assert isinstance(refresh_stale_sets(dg.build_schedule_context(instance=instance)), dg.SkipReason)
    partition = built.partition_files("dictionaries")[0].stem  # one layer retrained: its row is newer
    rows = read_table(built, "dictionaries", partitions=[partition])
    write_partition(built, "dictionaries", partition, rows.with_columns(created_at=pl.lit(datetime.now(UTC))))
    (again,) = refresh_stale_sets(dg.build_schedule_context(instance=instance))
    assert again.tags == request.tags
    single = dg.materialize([set_graphs], instance=instance, partition_key="animals:1", resources=resources)
    assert single.asset_materializations_for_node("set_graphs")[0].metadata["graphs_built"].value == 1
    (aggregate,) = set_circuits_sensor(dg.build_sensor_context(instance=instance)).run_requests
    assert aggregate.partition_key == "animals"  # a graph newer than the aggregate: aggregated again

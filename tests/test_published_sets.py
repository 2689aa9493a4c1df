"""Published transcoder sets on a 12-layer model: every layer reads its own file, whatever the order the
files are listed in, and a graph can be built from a folder with no store at all."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from circuitdb.attribution import load_transcoders, trace
from circuitdb.errors import CircuitDBError
from circuitdb.models import HookPoint, LoadedModel, capture, load_model

N_LATENTS, D = 96, 64


@pytest.fixture(scope="module")
def llama12(llama12_dir: Path) -> LoadedModel:
    return load_model(str(llama12_dir), device="cpu")


def _write_set(folder: Path, layers: range, d: int = D, listed: bool = True) -> None:
    """circuit-tracer files, each layer with its own scale and thresholds, listed in shuffled order as hf:// URIs
    (or not listed: then found by name, where lexicographic order would put layer_10 third)."""
    folder.mkdir(parents=True)
    for layer in layers:
        gen = torch.Generator().manual_seed(100 + layer)
        tensors = {
            "W_enc": torch.randn(N_LATENTS, d, generator=gen) * (0.5 + 0.1 * layer),
            "W_dec": torch.randn(N_LATENTS, d, generator=gen) * 0.1,
            "b_enc": torch.randn(N_LATENTS, generator=gen) * 0.1,
            "b_dec": torch.zeros(d),
            "activation_function.threshold": torch.rand(N_LATENTS, generator=gen) * (1 + layer),
        }
        save_file(tensors, folder / f"layer_{layer}.safetensors")
    order = torch.randperm(len(layers), generator=torch.Generator().manual_seed(7)).tolist()
    config = {"model_kind": "transcoder_set", "feature_input_hook": "ln2.hook_normalized"}
    config["feature_output_hook"] = "hook_mlp_out"
    if listed:
        config["transcoders"] = [f"hf://someone/tiny-transcoders/layer_{list(layers)[i]}.safetensors" for i in order]
    (folder / "config.yaml").write_text(yaml.safe_dump(config))


@pytest.mark.parametrize(("n_layers", "listed"), [(12, True), (12, False), (30, True)])
def test_active_features_per_layer_equal_a_direct_count(
    tmp_path: Path, deep_llama_dirs, llama12: LoadedModel, n_layers: int, listed: bool
) -> None:
    """12 layers, and 30 as the published SmolLM2 sets have."""
    lm = llama12 if n_layers == 12 else load_model(str(deep_llama_dirs[n_layers]), device="cpu")
    folder = tmp_path / "set"
    _write_set(folder, range(n_layers), listed=listed)
    ids = lm.encode("The quick brown fox jumps over the lazy dog")
    rm = trace(lm, ids, load_transcoders(folder))
    hooks = [HookPoint.make("mlp_in", layer) for layer in range(n_layers)]
    mlp_in = capture(lm, torch.tensor([ids]), hooks)
    counts = []
    for layer in range(n_layers):
        file = load_file(folder / f"layer_{layer}.safetensors")
        pre = mlp_in[f"mlp_in.{layer}"][0, 1:] @ file["W_enc"].T + file["b_enc"]  # position 0 is left to errors
        direct = int((pre > file["activation_function.threshold"]).sum())
        counts.append(direct)
        assert int((rm.features.layer == layer).sum()) == direct, layer
    assert min(counts) > 0 and len(set(counts)) > 6, counts  # every layer active, and layers distinguishable


def test_sets_that_do_not_fit_the_model_name_the_file(tmp_path: Path, llama12: LoadedModel) -> None:
    ids = llama12.encode("The quick brown fox")
    _write_set(tmp_path / "deep", range(13))
    with pytest.raises(CircuitDBError, match=r"layer_12.safetensors: dictionary for layer 12, but .* has 12 layers"):
        trace(llama12, ids, load_transcoders(tmp_path / "deep"))
    _write_set(tmp_path / "wide", range(12), d=32)
    with pytest.raises(CircuitDBError, match=r"layer_0.safetensors: width 32 → 32 does not fit"):
        trace(llama12, ids, load_transcoders(tmp_path / "wide"))


def test_graph_from_a_folder_without_a_store(tmp_path: Path, llama12_dir: Path, cli) -> None:
    """A model and a transcoder folder are enough: the store is created for the graph."""
    folder = tmp_path / "set"
    _write_set(folder, range(12))
    store = tmp_path / "new-store"
    project = tmp_path / "circuitdb.yaml"
    project.write_text(f"model:\n  spec: {llama12_dir}\n  device: cpu\nstore: {store}\n")
    code, out, err = cli(
        "graph", "build", "The quick brown fox", "--transcoders", str(folder), "-f", "json", "--config", str(project)
    )
    assert code == 0, err
    built = json.loads(out.strip().splitlines()[-1])
    assert built["n_active_features"] > 0 and (store / "graphs" / f"{built['slug']}.json").is_file()
    code, out, err = cli(
        "sql", "SELECT count(*) AS n FROM graph_nodes WHERE kind = 'feature'", "-f", "json", "--config", str(project)
    )
    assert code == 0 and json.loads(out)[0]["n"] > 0, err


def test_dictionary_import_then_graph_from_the_store(tmp_path: Path, llama12_dir: Path, cli) -> None:
    """A sparsify run folder (12 `layers.N.mlp` transcoders) imported into a new store, then used by name."""
    run = tmp_path / "sparsify-run"
    for layer in range(12):
        gen = torch.Generator().manual_seed(layer)
        hook = run / f"layers.{layer}.mlp"
        hook.mkdir(parents=True)
        tensors = {
            "encoder.weight": torch.randn(N_LATENTS, D, generator=gen),
            "encoder.bias": torch.randn(N_LATENTS, generator=gen),
            "W_dec": torch.randn(N_LATENTS, D, generator=gen) * 0.1,
            "b_dec": torch.randn(D, generator=gen) * 0.1,
        }
        save_file(tensors, hook / "sae.safetensors")
        config = {"activation": "topk", "num_latents": N_LATENTS, "k": 5, "transcode": True, "d_in": D}
        (hook / "cfg.json").write_text(json.dumps(config))
    store = tmp_path / "store"
    project = tmp_path / "circuitdb.yaml"
    yaml_text = f"model:\n  spec: {llama12_dir}\n  device: cpu\nstore: {store}\nattribution:\n  dictionaries: sp\n"
    project.write_text(yaml_text)
    config = ("--config", str(project))
    code, out, err = cli("dictionary", "import", str(run), "--name", "sp", *config)
    assert code == 0 and "12 layers × 96 latents" in out and "sparsify" in out, err
    code, out, _ = cli(
        "sql", "SELECT layer, kind, activation, input_hook, k FROM dictionaries ORDER BY layer", "-f", "json", *config
    )
    rows = json.loads(out)
    assert [r["layer"] for r in rows] == list(range(12)) and rows[11]["input_hook"] == "mlp_in.11"
    assert {(r["kind"], r["activation"], r["k"]) for r in rows} == {("plt", "topk", 5)}
    code, out, err = cli("graph", "build", "The quick brown fox", "-f", "json", *config)
    assert code == 0, err
    built = json.loads(out.strip().splitlines()[-1])
    assert built["n_active_features"] == 5 * 12 * 4, err  # k per token, layer, non-BOS position
    code, _, err = cli(
        "dictionary", "export", "--name", "sp", "--format", "circuit-tracer", "--out", str(tmp_path / "ct"), *config
    )
    assert code == 0 and (tmp_path / "ct" / "layer_11.safetensors").is_file(), err
    narrow = tmp_path / "narrow"
    _write_set(narrow, range(12), d=32)
    for args, message in (
        (["dictionary", "import", str(narrow)], "layer_0.safetensors: width 32 → 32 does not fit"),
        (["dictionary", "import", str(tmp_path / "nowhere")], "does not exist"),
        (["dictionary", "import", str(tmp_path)], "no known dictionary format"),
        (["dictionary", "import", str(run), "--hook", "mlp_nope"], "--hook must be one of"),
    ):
        code, _, err = cli(*args, *config)
        assert code == 1 and err.strip().splitlines()[-1].startswith("error: ") and message in err, (args, err)

"""Every format: round trips through our writers, and reads of files written the way their owners write
them (key names, shapes, config fields), checked against the owner's encoder written out by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file

from circuitdb.dictionaries import DictionaryConfig, SparseCoder
from circuitdb.dictionaries.formats import (
    DictionarySet,
    ReadHint,
    load_dictionary,
    read_dictionaries,
    save_dictionary,
    write_dictionaries,
)
from circuitdb.dictionaries.formats._files import layer_in_name
from circuitdb.errors import CircuitDBError


def _random_coder(kind: str, activation: str, skip: bool = False, seed: int = 0, d: int = 16) -> SparseCoder:
    torch.manual_seed(seed)
    coder = SparseCoder(DictionaryConfig(kind=kind, activation=activation, n_latents=48, k=6, skip=skip), d, d)
    with torch.no_grad():
        for parameter in coder.parameters():
            parameter.normal_(0, 0.3)
    return coder.eval()


def _same_outputs(a: SparseCoder, b: SparseCoder) -> None:
    x = torch.randn(20, a.d_in, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        (ra, la), (rb, lb) = a(x), b(x)
    assert torch.allclose(la, lb, atol=1e-5) and torch.allclose(ra, rb, atol=1e-5)
    assert (la > 0).any()


@pytest.mark.parametrize(
    ("kind", "activation"), [("plt", "topk"), ("plt", "jumprelu"), ("sae", "relu"), ("sae", "batchtopk")]
)
def test_own_format_round_trip(tmp_path: Path, kind: str, activation: str) -> None:
    coder = _random_coder(kind, activation, skip=kind == "plt")
    save_dictionary(coder, tmp_path / "d", {"layer": 3, "input_hook": "mlp_in.3"})
    loaded, meta = load_dictionary(tmp_path / "d")
    assert meta["layer"] == 3
    _same_outputs(coder, loaded)
    assert not list(tmp_path.glob(".d.*"))  # no staging folder left behind


def test_files_written_before_activation_modules_still_load(tmp_path: Path) -> None:
    coder = _random_coder("plt", "jumprelu")
    save_dictionary(coder, tmp_path / "d", {"layer": 0})
    weights = tmp_path / "d" / "weights.safetensors"
    from safetensors.torch import load_file

    old = {k.replace("activation.", "jumprelu."): v for k, v in load_file(weights).items()}
    save_file(old, weights)
    _same_outputs(coder, load_dictionary(tmp_path / "d")[0])


_ROUND_TRIPS = [
    ("circuit-tracer", "plt", "topk", True),
    ("circuit-tracer", "plt", "jumprelu", True),
    ("circuit-tracer", "plt", "relu", False),
    ("gemmascope", "plt", "jumprelu", False),
    ("gemmascope", "sae", "relu", False),
    ("sparsify", "plt", "topk", True),
    ("sparsify", "sae", "topk", False),
    ("saelens", "sae", "topk", False),
    ("saelens", "sae", "jumprelu", False),
    ("saelens", "sae", "relu", False),
    ("circuitdb", "sae", "batchtopk", False),
]


@pytest.mark.parametrize(("fmt", "kind", "activation", "skip"), _ROUND_TRIPS)
def test_round_trip_through_every_format(tmp_path: Path, fmt: str, kind: str, activation: str, skip: bool) -> None:
    """12 layers written and read back: same layers, same latents and outputs, found without naming the format."""
    coders = {layer: _random_coder(kind, activation, skip=skip, seed=layer) for layer in range(12)}
    hook = "mlp_in" if kind == "plt" else "resid_post"
    out_kind = "mlp_out" if kind == "plt" else "resid_post"
    written = DictionarySet("set", "circuitdb", coders, None, hook, out_kind, model="tiny")
    folder = tmp_path / "out"
    write_dictionaries(written, fmt, folder)
    hint = ReadHint(kind=kind, hook=None if kind == "plt" else "resid_post")
    read = read_dictionaries(folder, hint=hint)
    assert read.format == fmt and read.layers == list(range(12)) and read.kind == kind
    assert (read.input_kind, read.output_kind) == (hook, out_kind)
    for layer in range(12):
        _same_outputs(coders[layer], read.coders[layer])


def _circuit_tracer_layer(path: Path, n: int, d: int, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    tensors = {
        "W_enc": torch.randn(n, d, generator=gen),
        "W_dec": torch.randn(n, d, generator=gen),
        "b_enc": torch.randn(n, generator=gen) * 0.1,
        "b_dec": torch.randn(d, generator=gen),
        "activation_function.threshold": torch.rand(n, generator=gen),
    }
    save_file(tensors, path)
    return tensors


def test_circuit_tracer_set_layers_come_from_file_names(tmp_path: Path) -> None:
    """14 layers listed in shuffled order as hf:// URIs (as published configs do): each file is the layer its
    name says, whatever its position in the list; the encoder matches circuit-tracer's JumpReLU by hand."""
    folder = tmp_path / "downloaded"
    (folder / "plt").mkdir(parents=True)
    params = {
        layer: _circuit_tracer_layer(folder / "plt" / f"layer_{layer}.safetensors", 32, 8, layer) for layer in range(14)
    }
    order = torch.randperm(14, generator=torch.Generator().manual_seed(3)).tolist()
    assert order != sorted(order)
    config = {
        "model_name": "tiny",
        "model_kind": "transcoder_set",
        "feature_input_hook": "mlp.hook_in",
        "feature_output_hook": "hook_mlp_out",
        "transcoders": [f"hf://owner/repo/plt/layer_{layer}.safetensors" for layer in order],
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    read = read_dictionaries(folder)
    assert read.format == "circuit-tracer" and read.layers == list(range(14))
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(9))
    for layer, p in params.items():
        pre = x @ p["W_enc"].T + p["b_enc"]
        expected = (pre * (pre > p["activation_function.threshold"])) @ p["W_dec"] + p["b_dec"]
        with torch.no_grad():
            assert torch.allclose(read.coders[layer](x)[0], expected, atol=1e-5), layer
        assert read.sources[layer].endswith(f"layer_{layer}.safetensors")


def test_circuit_tracer_set_errors_name_the_file(tmp_path: Path) -> None:
    def make(name: str, layers: list[int], listed: list[str] | None = None, d: int = 8) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        for layer in layers:
            _circuit_tracer_layer(folder / f"layer_{layer}.safetensors", 32, d, layer)
        config = {"model_kind": "transcoder_set"} | ({"transcoders": listed} if listed else {})
        (folder / "config.yaml").write_text(yaml.safe_dump(config))
        return folder

    with pytest.raises(CircuitDBError, match="no transcoder for layer 5"):
        read_dictionaries(make("gap", [0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11, 12]))
    duplicate = make("dup", [0, 1], ["layer_0.safetensors", "layer_1.safetensors", "layer_1.safetensors"])
    with pytest.raises(CircuitDBError, match=r"layer_1.safetensors: a second transcoder for layer 1"):
        read_dictionaries(duplicate)
    missing = make(
        "missing",
        [0, 1],
        ["hf://o/r/layer_0.safetensors", "hf://o/r/sub/layer_1.safetensors", "hf://o/r/layer_2.safetensors"],
    )
    with pytest.raises(CircuitDBError, match=r"lists hf://o/r/layer_2.safetensors, but neither"):
        read_dictionaries(missing)
    folder = make("shapes", [0, 1])
    _circuit_tracer_layer(folder / "layer_1.safetensors", 32, 9, 1)
    with pytest.raises(CircuitDBError, match=r"layer_1.safetensors: .*b_dec has shape|layer_1.safetensors: 32 latents"):
        read_dictionaries(folder)


@pytest.mark.parametrize(
    ("path", "layer"),
    [
        ("layer_12.safetensors", 12),
        ("hf-cache/layers/layer_3/width_16k/average_l0_76/params.npz", 3),
        ("layers.7.mlp", 7),
        ("W_enc_11.safetensors", 11),
        ("transcoder.safetensors", None),
        ("width_16k/average_l0_76/params.npz", None),
    ],
)
def test_layer_in_name(path: str, layer: int | None) -> None:
    assert layer_in_name(path) == layer


def test_gemmascope_params_as_published(tmp_path: Path) -> None:
    """params.npz with W_enc [d, n]; f = JumpReLU(x·W_enc + b_enc) (no centring), x̂ = f·W_dec + b_dec."""
    gen = np.random.default_rng(0)
    folder = tmp_path / "gemma-scope-2b-pt-res"
    params = {}
    for layer in (0, 1):
        p = {
            "W_enc": gen.normal(size=(8, 24)).astype(np.float32),
            "W_dec": gen.normal(size=(24, 8)).astype(np.float32),
            "b_enc": gen.normal(size=24).astype(np.float32) * 0.1,
            "b_dec": gen.normal(size=8).astype(np.float32),
            "threshold": gen.uniform(size=24).astype(np.float32),
        }
        where = folder / f"layer_{layer}" / "width_16k" / "average_l0_71"
        where.mkdir(parents=True)
        np.savez(where / "params.npz", **p)
        params[layer] = {k: torch.from_numpy(v) for k, v in p.items()}
    read = read_dictionaries(folder)
    assert read.format == "gemmascope" and read.kind == "sae" and read.input_kind == "resid_post"
    x = torch.randn(6, 8, generator=torch.Generator().manual_seed(2))
    for layer, p in params.items():
        pre = x @ p["W_enc"] + p["b_enc"]
        expected = (pre * (pre > p["threshold"])) @ p["W_dec"] + p["b_dec"]
        with torch.no_grad():
            assert torch.allclose(read.coders[layer](x)[0], expected, atol=1e-5)
    with pytest.raises(CircuitDBError, match="do not say what they are"):
        read_dictionaries(folder.rename(tmp_path / "unnamed"))


def test_sparsify_transcoder_as_published(tmp_path: Path) -> None:
    """cfg.json + sae.safetensors per hook folder; f = TopK(ReLU(encoder(x))) for a transcoder, + x·W_skipᵀ."""
    gen = torch.Generator().manual_seed(4)
    folder = tmp_path / "run"
    hook = folder / "layers.3.mlp"
    hook.mkdir(parents=True)
    tensors = {
        "encoder.weight": torch.randn(40, 8, generator=gen),
        "encoder.bias": torch.randn(40, generator=gen),
        "W_dec": torch.randn(40, 8, generator=gen),
        "b_dec": torch.randn(8, generator=gen),
        "W_skip": torch.randn(8, 8, generator=gen),
    }
    save_file(tensors, hook / "sae.safetensors")
    config = {"activation": "topk", "expansion_factor": 5, "normalize_decoder": True, "num_latents": 40, "k": 4}
    config |= {"multi_topk": False, "skip_connection": True, "transcode": True, "d_in": 8}
    (hook / "cfg.json").write_text(json.dumps(config))
    read = read_dictionaries(folder)
    assert (read.format, read.kind, read.layers, read.input_kind) == ("sparsify", "plt", [3], "mlp_in")
    x = torch.randn(6, 8, generator=gen)
    pre = torch.relu(x @ tensors["encoder.weight"].T + tensors["encoder.bias"])
    values, indices = pre.topk(4, dim=-1)
    latents = torch.zeros_like(pre).scatter_(-1, indices, values)
    expected = latents @ tensors["W_dec"] + tensors["b_dec"] + x @ tensors["W_skip"].T
    with torch.no_grad():
        assert torch.allclose(read.coders[3](x)[0], expected, atol=1e-5)


@pytest.mark.parametrize("architecture", ["standard", "jumprelu", "topk"])
def test_saelens_as_published(tmp_path: Path, architecture: str) -> None:
    gen = torch.Generator().manual_seed(1)
    w_enc, w_dec = torch.randn(8, 24, generator=gen), torch.randn(24, 8, generator=gen)
    b_enc, b_dec = torch.randn(24, generator=gen), torch.randn(8, generator=gen)
    threshold = torch.rand(24, generator=gen)
    tensors = {"W_enc": w_enc, "W_dec": w_dec, "b_enc": b_enc, "b_dec": b_dec}
    if architecture == "jumprelu":
        tensors["threshold"] = threshold
    save_file(tensors, tmp_path / "sae_weights.safetensors")
    cfg = {"architecture": architecture, "d_in": 8, "d_sae": 24, "hook_name": "blocks.5.hook_resid_post"}
    if architecture == "topk":  # SAELens 6 keeps the hook in the metadata
        cfg["metadata"] = {"hook_name": cfg.pop("hook_name")}
    cfg |= {"apply_b_dec_to_input": architecture != "standard", "activation_fn_kwargs": {"k": 3}}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    x = torch.randn(6, 8, generator=gen)
    pre = (x - b_dec if cfg["apply_b_dec_to_input"] else x) @ w_enc + b_enc
    if architecture == "standard":
        latents = pre.relu()
    elif architecture == "jumprelu":
        latents = pre * (pre > threshold)
    else:
        values, indices = pre.topk(3, dim=-1)
        latents = torch.zeros_like(pre).scatter_(-1, indices, values.relu())
    read = read_dictionaries(tmp_path)
    assert read.layers == [5] and read.input_kind == "resid_post"
    with torch.no_grad():
        reconstruction, got = read.coders[5](x)
    assert torch.allclose(got, latents, atol=1e-5)
    assert torch.allclose(reconstruction, latents @ w_dec + b_dec, atol=1e-4)


def test_wrong_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CircuitDBError, match="not a circuitdb dictionary"):
        load_dictionary(tmp_path)
    with pytest.raises(CircuitDBError, match="missing or corrupt"):
        load_dictionary(tmp_path / "nowhere")
    with pytest.raises(CircuitDBError, match="no known dictionary format"):
        read_dictionaries(tmp_path)
    with pytest.raises(CircuitDBError, match="does not exist"):
        read_dictionaries(tmp_path / "nowhere")
    with pytest.raises(CircuitDBError, match="unknown dictionary format"):
        read_dictionaries(tmp_path, "nope")
    (tmp_path / "config.yaml").write_text("model_kind: something_else\n")
    with pytest.raises(CircuitDBError, match="model_kind must be"):
        read_dictionaries(tmp_path, "circuit-tracer")
    (tmp_path / "config.yaml").write_text("model_kind: transcoder_set\nfeature_input_hook: hook_resid_mid\n")
    with pytest.raises(CircuitDBError, match="feature_input_hook 'hook_resid_mid' is not supported"):
        read_dictionaries(tmp_path, "circuit-tracer")
    coder = _random_coder("sae", "topk")
    save_dictionary(coder, tmp_path / "d", {})
    (tmp_path / "d" / "weights.safetensors").write_bytes(b"garbage")
    with pytest.raises(CircuitDBError, match="not a readable safetensors file"):
        load_dictionary(tmp_path / "d")
    saes = DictionarySet("s", "circuitdb", {0: coder}, None, "resid_post", "resid_post")
    with pytest.raises(CircuitDBError, match="circuit-tracer holds transcoders"):
        write_dictionaries(saes, "circuit-tracer", tmp_path / "ct")
    assert not (tmp_path / "ct").exists()


def test_the_cli_offers_every_registered_format(cli, tmp_path: Path) -> None:
    """A format is its module: the CLI lists the registry's formats by themselves and refuses others in one line."""
    from circuitdb.dictionaries.formats import formats

    code, out, _ = cli("dictionary", "formats", "-f", "json")
    assert code == 0 and [row["format"] for row in json.loads(out)] == sorted(formats())
    assert all(row["files"] for row in json.loads(out))
    code, _, err = cli("dictionary", "export", "--out", str(tmp_path / "out"), "--format", "nope", "--store", "x")
    assert (
        code == 1 and err.strip() == f"error: unknown dictionary format 'nope'; expected one of {', '.join(formats())}"
    )

"""Round trips through every format, and imports of files written the way the other projects write them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from circuitdb.dictionaries import DictionaryConfig, SparseCoder
from circuitdb.dictionaries.formats import (
    export_circuit_tracer,
    export_saelens,
    import_circuit_tracer,
    import_saelens,
    load_dictionary,
    save_dictionary,
)
from circuitdb.errors import CircuitDBError


def _random_coder(kind: str, activation: str, skip: bool = False, seed: int = 0) -> SparseCoder:
    torch.manual_seed(seed)
    coder = SparseCoder(DictionaryConfig(kind=kind, activation=activation, n_latents=48, k=6, skip=skip), 16, 16)
    with torch.no_grad():
        for parameter in coder.parameters():
            parameter.normal_(0, 0.3)
    return coder.eval()


def _same_outputs(a: SparseCoder, b: SparseCoder) -> None:
    x = torch.randn(20, 16, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        (ra, la), (rb, lb) = a(x), b(x)
    assert torch.allclose(la, lb, atol=1e-6) and torch.allclose(ra, rb, atol=1e-5)
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


@pytest.mark.parametrize("activation", ["topk", "jumprelu", "relu"])
def test_circuit_tracer_round_trip(tmp_path: Path, activation: str) -> None:
    coders = {layer: _random_coder("plt", activation, skip=True, seed=layer) for layer in range(3)}
    export_circuit_tracer(coders, tmp_path / "ct", "tiny")
    loaded = import_circuit_tracer(tmp_path / "ct")
    assert sorted(loaded) == [0, 1, 2]
    for layer in coders:
        _same_outputs(coders[layer], loaded[layer])


def test_import_circuit_tracer_files_written_independently(tmp_path: Path) -> None:
    """Files as circuit-tracer's loaders read them: W_enc/W_dec [d_transcoder, d_model], JumpReLU thresholds."""
    gen = torch.Generator().manual_seed(0)
    w_enc, w_dec = torch.randn(32, 8, generator=gen), torch.randn(32, 8, generator=gen)
    b_enc, b_dec = torch.randn(32, generator=gen), torch.randn(8, generator=gen)
    threshold = torch.rand(32, generator=gen)
    save_file(
        {"W_enc": w_enc, "W_dec": w_dec, "b_enc": b_enc, "b_dec": b_dec, "activation_function.threshold": threshold},
        tmp_path / "layer_0.safetensors",
    )
    (tmp_path / "config.yaml").write_text(
        yaml.safe_dump(
            {
                "model_kind": "transcoder_set",
                "feature_input_hook": "mlp.hook_in",
                "feature_output_hook": "hook_mlp_out",
                "transcoders": ["layer_0.safetensors"],
            }
        )
    )
    coder = import_circuit_tracer(tmp_path)[0]
    x = torch.randn(5, 8, generator=gen)
    pre = x @ w_enc.T + b_enc
    expected = (pre * (pre > threshold)) @ w_dec + b_dec
    with torch.no_grad():
        assert torch.allclose(coder(x)[0], expected, atol=1e-5)


def test_saelens_round_trip_and_independent_import(tmp_path: Path) -> None:
    coder = _random_coder("sae", "topk")
    export_saelens(coder, tmp_path / "sl", "resid_post.2", "tiny")
    assert json.loads((tmp_path / "sl" / "cfg.json").read_text())["hook_name"] == "blocks.2.hook_resid_post"
    _same_outputs(coder, import_saelens(tmp_path / "sl"))

    gen = torch.Generator().manual_seed(1)  # a SAELens "standard" (ReLU) SAE written by hand
    w_enc, w_dec = torch.randn(8, 24, generator=gen), torch.randn(24, 8, generator=gen)
    b_enc, b_dec = torch.randn(24, generator=gen), torch.randn(8, generator=gen)
    folder = tmp_path / "hand"
    folder.mkdir()
    save_file({"W_enc": w_enc, "W_dec": w_dec, "b_enc": b_enc, "b_dec": b_dec}, folder / "sae_weights.safetensors")
    cfg = {"architecture": "standard", "d_in": 8, "d_sae": 24, "apply_b_dec_to_input": False, "hook_name": "x"}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    x = torch.randn(6, 8, generator=gen)
    expected = torch.relu(x @ w_enc + b_enc) @ w_dec + b_dec
    with torch.no_grad():
        assert torch.allclose(import_saelens(folder)(x)[0], expected, atol=1e-5)


def test_wrong_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CircuitDBError, match="not a circuitdb dictionary"):
        load_dictionary(tmp_path)
    with pytest.raises(CircuitDBError, match="missing or corrupt"):
        load_dictionary(tmp_path / "nowhere")
    (tmp_path / "config.yaml").write_text("model_kind: cross_layer_transcoder\n")
    with pytest.raises(CircuitDBError, match="model_kind must be transcoder_set"):
        import_circuit_tracer(tmp_path)
    coder = _random_coder("sae", "topk")
    save_dictionary(coder, tmp_path / "d", {})
    (tmp_path / "d" / "weights.safetensors").write_bytes(b"garbage")
    with pytest.raises(CircuitDBError, match="not a readable safetensors file"):
        load_dictionary(tmp_path / "d")
    with pytest.raises(CircuitDBError, match="per-layer transcoders"):
        export_circuit_tracer({0: coder}, tmp_path / "ct", "m")

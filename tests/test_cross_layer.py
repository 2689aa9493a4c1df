"""Cross-layer transcoder: the definition, training on a tiny model, and circuit-tracer files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from circuitdb.config import CorpusConfig, HarvestConfig
from circuitdb.corpus import tokenize_corpus
from circuitdb.dictionaries import ActivationSource, DictionaryConfig, TrainConfig, train_dictionary
from circuitdb.dictionaries.cross_layer_transcoder import CrossLayerTranscoder
from circuitdb.dictionaries.formats import load_dictionary, save_dictionary
from circuitdb.dictionaries.formats.circuit_tracer import export_clt, read_clt
from circuitdb.harvest import harvest
from circuitdb.models import LoadedModel, resolve_hooks


def _clt(activation: str = "relu", seed: int = 0) -> CrossLayerTranscoder:
    torch.manual_seed(seed)
    clt = CrossLayerTranscoder(DictionaryConfig(kind="clt", activation=activation, n_latents=12, k=3), 3, 5)
    with torch.no_grad():
        for parameter in clt.parameters():
            parameter.normal_(0, 0.5)
    return clt.eval()


def test_decoder_writes_to_own_and_later_layers_only() -> None:
    clt = _clt()
    x = torch.randn(4, 3, 5)
    with torch.no_grad():
        recon, latents = clt(x)
        for target in range(3):
            expected = clt.b_dec[target].clone()
            for source in range(target + 1):
                pre = x[:, source] @ clt.W_enc[source].T + clt.b_enc[source]
                expected = expected + pre.relu() @ clt.W_dec[source][:, target - source]
            assert torch.allclose(recon[:, target], expected, atol=1e-5)
        changed = x.clone()
        changed[:, 2] += 1.0  # a later layer's input cannot change earlier outputs
        assert torch.allclose(clt(changed)[0][:, :2], recon[:, :2])


def test_folding_keeps_the_function() -> None:
    clt = _clt()
    x = torch.randn(4, 3, 5)
    mean, s_in, s_out = torch.randn(3, 5), torch.tensor([2.0, 0.5, 3.0]), torch.tensor([0.25, 4.0, 1.5])
    with torch.no_grad():
        expected = clt(x * s_in[:, None] - mean)[0] / s_out[:, None]
        clt.fold_input_mean(mean)
        clt.fold_scales(s_in, s_out)
        assert torch.allclose(clt(x)[0], expected, atol=1e-4)


@pytest.mark.parametrize("activation", ["topk", "batchtopk", "relu", "jumprelu"])
def test_training_on_a_tiny_model(llama: LoadedModel, text_file: Path, tmp_path: Path, activation: str) -> None:
    blocks = tokenize_corpus(llama, CorpusConfig(source=str(text_file), context=32, max_tokens=32 * 48)).blocks
    names = [f"{kind}.{layer}" for kind in ("mlp_in", "mlp_out") for layer in range(3)]
    harvest(llama, blocks, resolve_hooks(llama, names), tmp_path / "run", HarvestConfig(shard_mb=1), progress=False)
    source = ActivationSource(tmp_path / "run", [f"mlp_in.{i}" for i in range(3)], [f"mlp_out.{i}" for i in range(3)])
    cfg = DictionaryConfig(kind="clt", activation=activation, n_latents=96, k=8, sparsity_coefficient=1e-4)
    result = train_dictionary(
        cfg, source, TrainConfig(batch_size=128, epochs=15, lr=3e-3, warmup_steps=5), progress=False
    )
    x, y = source.sequences()
    x, y = x[:, 1:].reshape(-1, 3, 64), y[:, 1:].reshape(-1, 3, 64)
    with torch.no_grad():
        recon, _ = result.coder(x)
    fvu = ((y - recon) ** 2).sum() / ((y - y.mean(0)) ** 2).sum()
    assert fvu < 0.5, fvu
    save_dictionary(result.coder, tmp_path / "saved", {"layers": [0, 1, 2]})
    loaded, _ = load_dictionary(tmp_path / "saved")
    with torch.no_grad():
        assert torch.allclose(loaded(x)[0], recon, atol=1e-5)


@pytest.mark.parametrize("activation", ["relu", "jumprelu", "batchtopk"])
def test_circuit_tracer_round_trip(tmp_path: Path, activation: str) -> None:
    clt = _clt(activation)
    export_clt(clt, tmp_path / "ct", "tiny")
    loaded = read_clt(tmp_path / "ct")
    x = torch.randn(6, 3, 5)
    with torch.no_grad():
        assert torch.allclose(loaded(x)[0], clt(x)[0], atol=1e-5)


def test_import_circuit_tracer_clt_written_independently(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    n, d, layers = 6, 4, 2
    params = {}
    for i in range(layers):
        params[i] = {
            "W_enc": torch.randn(n, d, generator=gen),
            "b_enc": torch.randn(n, generator=gen),
            "b_dec": torch.randn(d, generator=gen),
            "threshold": torch.rand(n, generator=gen),
            "W_dec": torch.randn(n, layers - i, d, generator=gen),
        }
        p = params[i]
        save_file(
            {
                f"W_enc_{i}": p["W_enc"],
                f"b_enc_{i}": p["b_enc"],
                f"b_dec_{i}": p["b_dec"],
                f"threshold_{i}": p["threshold"],
            },
            tmp_path / f"W_enc_{i}.safetensors",
        )
        save_file({f"W_dec_{i}": p["W_dec"]}, tmp_path / f"W_dec_{i}.safetensors")
    clt = read_clt(tmp_path)
    x = torch.randn(3, layers, d, generator=gen)
    acts = []
    for i in range(layers):
        pre = x[:, i] @ params[i]["W_enc"].T + params[i]["b_enc"]
        acts.append(pre * (pre > params[i]["threshold"]))
    expected_last = params[1]["b_dec"] + acts[0] @ params[0]["W_dec"][:, 1] + acts[1] @ params[1]["W_dec"][:, 0]
    with torch.no_grad():
        assert torch.allclose(clt(x)[0][:, 1], expected_last, atol=1e-4)

"""Dictionary metrics against independent computations."""

from __future__ import annotations

import pytest
import torch

from circuitdb.dictionaries import DictionaryConfig, SparseCoder
from circuitdb.dictionaries.cross_layer_transcoder import CrossLayerTranscoder
from circuitdb.dictionaries.metrics import clt_splice, dictionary_splice, reconstruction_metrics, spliced_metrics
from circuitdb.errors import CircuitDBError
from circuitdb.models import LoadedModel, capture, resolve_hooks


def _coder(d: int, kind: str) -> SparseCoder:
    torch.manual_seed(0)
    return SparseCoder(DictionaryConfig(kind=kind, n_latents=32, k=4), d, d).eval()


def test_reconstruction_metrics() -> None:
    coder = _coder(8, "sae")
    gen = torch.Generator().manual_seed(0)
    inputs = torch.randn(3, 5, 8, generator=gen)
    inputs[:, 0] *= 50  # a BOS-like position with a huge norm
    metrics = reconstruction_metrics(coder, inputs, inputs, chunk=4)
    with torch.no_grad():
        recon, latents = coder(inputs.reshape(-1, 8))
    recon, latents = recon.view(3, 5, 8), latents.view(3, 5, -1)
    err = ((inputs - recon) ** 2).sum()
    assert abs(metrics["fvu"] - float(err / ((inputs - inputs.reshape(-1, 8).mean(0)) ** 2).sum())) < 1e-5
    rest, rest_recon = inputs[:, 1:], recon[:, 1:]
    expected = ((rest - rest_recon) ** 2).sum() / ((rest - rest.reshape(-1, 8).mean(0)) ** 2).sum()
    assert abs(metrics["fvu_excl_pos0"] - float(expected)) < 1e-5
    assert metrics["l0"] == float((latents[:, 1:] > 0).sum()) / 12
    assert metrics["dead_frac"] == float(1 - (latents[:, 1:] > 0).reshape(-1, 32).any(0).float().mean())


def test_spliced_metrics_match_a_hand_patched_model(llama: LoadedModel) -> None:
    coder = _coder(llama.d_model, "plt")
    blocks = torch.tensor([llama.encode("The quick brown fox jumps over the lazy dog again")[:9]] * 2)
    blocks[1, 3:] = blocks[1, 3:].flip(0)
    delta_ce, kl = spliced_metrics(llama, dictionary_splice(llama, coder, "mlp_in.1"), blocks)
    mlp = llama.block(1).mlp
    original_forward = mlp.forward
    with torch.no_grad():
        clean = llama.model(input_ids=blocks).logits[:, :-1].log_softmax(-1)

        def patched(x):
            out = original_forward(x)
            return torch.cat([out[:, :1], coder(x[:, 1:])[0]], dim=1)

        mlp.forward = patched
        try:
            spliced = llama.model(input_ids=blocks).logits[:, :-1].log_softmax(-1)
        finally:
            mlp.forward = original_forward
    targets = blocks[:, 1:]
    ce = lambda logp: -logp.gather(-1, targets.unsqueeze(-1)).mean()  # noqa: E731
    assert abs(delta_ce - float(ce(spliced) - ce(clean))) < 1e-4
    assert abs(kl - float((clean.exp() * (clean - spliced)).sum(-1).mean())) < 1e-4
    assert kl > 0


def test_clt_splice_feeds_each_mlp_the_sum_of_earlier_writes(llama: LoadedModel) -> None:
    torch.manual_seed(3)
    clt = CrossLayerTranscoder(
        DictionaryConfig(kind="clt", activation="relu", n_latents=16, k=4), 3, llama.d_model
    ).eval()
    blocks = torch.tensor([llama.encode("The quick brown fox jumps over the lazy dog")[:8]])
    splice = clt_splice(llama, clt, [0, 1, 2])
    hooks = resolve_hooks(llama, [f"{kind}.{layer}" for kind in ("mlp_in", "mlp_out") for layer in range(3)])
    with splice():
        acts = capture(llama, blocks, hooks)
    mlp_in = torch.stack([acts[f"mlp_in.{layer}"][0] for layer in range(3)], dim=1)  # [positions, L, d]
    mlp_out = torch.stack([acts[f"mlp_out.{layer}"][0] for layer in range(3)], dim=1)
    with torch.no_grad():
        expected, _ = clt(mlp_in)
    assert torch.allclose(mlp_out[1:], expected[1:], atol=1e-4)
    assert not torch.allclose(mlp_out[:1], expected[:1], atol=1e-4)  # position 0 keeps the model's own output
    delta_ce, kl = spliced_metrics(llama, splice, blocks)
    assert kl > 0 and abs(delta_ce) < 100


def test_dictionaries_that_do_not_fit_the_model_are_refused(llama: LoadedModel) -> None:
    with pytest.raises(CircuitDBError, match="does not match"):
        dictionary_splice(llama, _coder(32, "plt"), "mlp_in.1")
    with pytest.raises(CircuitDBError, match="out of range"):
        dictionary_splice(llama, _coder(llama.d_model, "plt"), "mlp_in.7")

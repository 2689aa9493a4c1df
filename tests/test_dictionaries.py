"""Sparse coders: the fast TopK path equals the dense definition; training learns and resumes exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from circuitdb.config import CorpusConfig, HarvestConfig
from circuitdb.corpus import tokenize_corpus
from circuitdb.dictionaries import (
    ActivationSource,
    DictionaryConfig,
    SparseCoder,
    TrainConfig,
    train_dictionary,
)
from circuitdb.dictionaries import shortlist as bf16_shortlist
from circuitdb.dictionaries.activations import JumpReLU
from circuitdb.dictionaries.data import LiveActivationSource
from circuitdb.errors import CircuitDBError
from circuitdb.harvest import harvest
from circuitdb.models import LoadedModel, resolve_hooks
from circuitdb.store.integrity import checksum_path


@pytest.fixture(params=[False, True], ids=["fp32", "bf16-shortlist"])
def shortlist(request, monkeypatch) -> bool:
    """Run a test with and without the bf16 shortlist of `top_pre_activations` (emulated where not native)."""
    monkeypatch.setattr(bf16_shortlist, "native_bf16", lambda device: request.param)
    return request.param


def test_sparse_topk_matches_dense_forward_and_gradients(shortlist: bool) -> None:
    torch.manual_seed(0)
    coder = SparseCoder(DictionaryConfig(kind="sae", n_latents=1024, k=5), 16, 16)
    with torch.no_grad():
        coder.b_enc.normal_()
        coder.b_dec.normal_()
    x = torch.randn(10, 16)
    dense_recon, latents = coder(x)
    assert ((latents > 0).sum(-1) <= 5).all()
    dense_recon.pow(2).sum().backward()
    dense_grads = [p.grad.clone() for p in (coder.W_enc, coder.W_dec, coder.b_enc)]
    coder.zero_grad()
    indices, values = coder.sparse_topk(x, 5)
    sparse_recon = coder.decode_sparse(indices, values) + coder.b_dec
    assert torch.allclose(sparse_recon, dense_recon, atol=1e-5)
    sparse_recon.pow(2).sum().backward()
    for dense, sparse in zip(dense_grads, (coder.W_enc.grad, coder.W_dec.grad, coder.b_enc.grad), strict=True):
        assert torch.allclose(dense, sparse, atol=1e-4)


@pytest.mark.parametrize(("kind", "activation"), [("sae", "topk"), ("plt", "topk"), ("plt", "relu")])
def test_active_latents_are_the_nonzeros_of_encode(kind: str, activation: str, shortlist: bool) -> None:
    torch.manual_seed(0)
    coder = SparseCoder(DictionaryConfig(kind=kind, activation=activation, n_latents=512, k=8), 64, 64)
    with torch.no_grad():
        coder.b_enc.normal_(std=0.5)
        coder.b_dec.normal_()
    x = torch.randn(400, 64) * 3
    dense = coder.encode(x).detach()
    rows, latents, values = coder.active_latents(x)
    sparse = torch.zeros_like(dense).index_put_((rows, latents), values)
    assert torch.allclose(sparse, dense, atol=1e-5)
    assert len(rows) == int((dense != 0).sum())


def test_jumprelu_threshold_gradient() -> None:
    jump = JumpReLU(1, initial_threshold=1.0, bandwidth=0.2)
    pre = torch.tensor([[1.05], [0.95], [3.0]])
    out = jump(pre)
    assert out.flatten().tolist() == pytest.approx([1.05, 0.0, 3.0])
    out.sum().backward()  # raising θ would drop the 1.05 token: d(sum)/dθ = −θ·K/ε per token in the window
    theta = 1.0
    expected = -(theta / 0.2) * 2  # two tokens within ±0.1 of θ
    assert jump.log_threshold.grad.item() == pytest.approx(expected * theta, rel=1e-4)  # chain rule through exp


def test_fold_scales_keeps_the_function() -> None:
    torch.manual_seed(1)
    coder = SparseCoder(DictionaryConfig(kind="plt", n_latents=32, k=4, skip=True), 8, 8)
    with torch.no_grad():
        coder.W_skip.normal_()
        coder.b_dec.normal_()
    x = torch.randn(6, 8)
    s_in, s_out = 3.0, 0.5
    expected = coder(x * s_in)[0] / s_out
    coder.fold_scales(s_in, s_out)
    assert torch.allclose(coder(x)[0], expected, atol=1e-5)


@pytest.fixture
def source(llama: LoadedModel, text_file: Path, tmp_path: Path) -> ActivationSource:
    blocks = tokenize_corpus(llama, CorpusConfig(source=str(text_file), context=32, max_tokens=32 * 64)).blocks
    hooks = resolve_hooks(llama, ["mlp_in.1", "mlp_out.1"])
    harvest(llama, blocks, hooks, tmp_path / "run", HarvestConfig(batch_size=16, shard_mb=1), progress=False)
    return ActivationSource(tmp_path / "run", ["mlp_in.1"], ["mlp_out.1"])


@pytest.mark.parametrize("activation", ["topk", "batchtopk", "jumprelu", "relu"])
def test_training_reduces_fvu(source: ActivationSource, activation: str) -> None:
    cfg = DictionaryConfig(kind="plt", activation=activation, n_latents=128, k=8, sparsity_coefficient=1e-4)
    result = train_dictionary(
        cfg, source, TrainConfig(batch_size=128, epochs=20, lr=3e-3, warmup_steps=10), progress=False
    )
    x, y = source.sequences()
    x, y = x[:, 1:, 0].reshape(-1, 64), y[:, 1:, 0].reshape(-1, 64)
    with torch.no_grad():
        recon, latents = result.coder(x)
    fvu = ((y - recon) ** 2).sum() / ((y - y.mean(0)) ** 2).sum()
    assert fvu < 0.5, fvu
    assert result.history[-1]["fvu"] < result.history[0]["fvu"]


def test_resume_after_a_kill_gives_the_same_weights(source: ActivationSource, tmp_path: Path, monkeypatch) -> None:
    cfg = DictionaryConfig(kind="plt", n_latents=64, k=4)
    tcfg = TrainConfig(batch_size=64, epochs=2, checkpoint_every=5, lr=2e-3)
    whole = train_dictionary(cfg, source, tcfg, checkpoint=tmp_path / "a.ckpt", progress=False).coder
    steps = {"n": 0}
    real_step = torch.optim.Adam.step

    def killed_at_step_12(self, *args, **kwargs):
        steps["n"] += 1
        if steps["n"] == 12:
            raise KeyboardInterrupt
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", killed_at_step_12)
    with pytest.raises(KeyboardInterrupt):
        train_dictionary(cfg, source, tcfg, checkpoint=tmp_path / "b.ckpt", progress=False)
    monkeypatch.setattr(torch.optim.Adam, "step", real_step)
    assert torch.load(tmp_path / "b.ckpt", weights_only=False)["step"] == 10
    resumed = train_dictionary(cfg, source, tcfg, checkpoint=tmp_path / "b.ckpt", progress=False).coder
    for name, tensor in whole.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name


def test_bad_inputs(source: ActivationSource, tmp_path: Path) -> None:
    with pytest.raises(CircuitDBError, match="no activations for resid_post.2"):
        ActivationSource(source.run_dir, ["resid_post.2"], ["resid_post.2"])
    with pytest.raises(CircuitDBError, match="d_in 64 must equal d_out 32"):
        SparseCoder(DictionaryConfig(kind="sae"), 64, 32)
    with pytest.raises(CircuitDBError, match="diverged"):
        train_dictionary(
            DictionaryConfig(kind="plt", n_latents=32, k=4), source, TrainConfig(batch_size=64, lr=1e30), progress=False
        )
    shard = source.run_dir / "mlp_in.1" / source.files[0]
    shard.unlink()  # a new file, as a crashed writer would leave it (shards are mapped, never rewritten in place)
    shard.write_bytes(b"not a safetensors file")
    checksum_path(shard).unlink()  # as one written before checksums: the reader itself finds the damage
    fresh = ActivationSource(source.run_dir, ["mlp_in.1"], ["mlp_out.1"])
    with pytest.raises(CircuitDBError, match="corrupt or missing activation shard"):
        train_dictionary(
            DictionaryConfig(kind="plt", n_latents=32, k=4), fresh, TrainConfig(batch_size=64), progress=False
        )


def test_fold_input_mean_keeps_the_function() -> None:
    torch.manual_seed(2)
    coder = SparseCoder(DictionaryConfig(kind="plt", n_latents=32, k=4, skip=True), 8, 8)
    with torch.no_grad():
        coder.W_skip.normal_()
    x, mean = torch.randn(6, 8), torch.randn(8)
    expected = coder(x - mean)[0]
    coder.fold_input_mean(mean)
    assert torch.allclose(coder(x)[0], expected, atol=1e-5)


def test_live_source_streams_what_the_harvest_stores(llama: LoadedModel, source: ActivationSource) -> None:
    blocks = torch.stack([load_file(source.run_dir / "mlp_in.1" / f)["token_ids"] for f in source.files]).flatten(0, 1)
    live = LiveActivationSource(llama, blocks, ["mlp_in.1"], ["mlp_out.1"], buffer_blocks=8)
    assert live.n_tokens == source.n_tokens
    live_in, live_out = map(torch.cat, zip(*live.batches(31, seed=0, epoch=0), strict=True))
    stored_in, stored_out = source.sequences()
    stored_in, stored_out = stored_in[:, 1:].flatten(0, 1), stored_out[:, 1:].flatten(0, 1)
    # the same tokens in another order: every live row has a stored twin (up to fp16 storage)
    assert live_in.shape[0] == source.n_tokens // 31 * 31
    nearest = torch.cdist(live_in[:, 0], stored_in[:, 0]).min(dim=1)
    assert (nearest.values < 1e-2 * live_in[:, 0].norm(dim=-1)).all()
    assert torch.allclose(live_out[:, 0], stored_out[nearest.indices, 0], rtol=1e-2, atol=1e-2)
    result = train_dictionary(
        DictionaryConfig(kind="plt", n_latents=64, k=4), live, TrainConfig(batch_size=64), progress=False
    )
    assert result.tokens == source.n_tokens // 64 * 64


def test_each_kind_is_its_class_and_encodes_as_its_definition() -> None:
    """`SparseCoder(cfg)` is an SAE or a transcoder by `cfg.kind`: only the SAE reads its input centred on b_dec
    (checked against the formula), and only the SAE must read and write one width."""
    from circuitdb.dictionaries.sparse_coder import SparseAutoencoder, Transcoder

    torch.manual_seed(0)
    x = torch.randn(5, 6)
    for kind, cls, centred in (("sae", SparseAutoencoder, True), ("plt", Transcoder, False)):
        coder = SparseCoder(DictionaryConfig(kind=kind, activation="relu", n_latents=16, k=4), 6, 6)
        with torch.no_grad():
            coder.b_dec.normal_()
            coder.b_enc.normal_()
        assert type(coder) is cls and coder.kind == kind
        expected = ((x - coder.b_dec if centred else x) @ coder.W_enc.T + coder.b_enc).relu()
        torch.testing.assert_close(coder.encode(x), expected)
    assert type(SparseCoder(DictionaryConfig(kind="plt", n_latents=16, k=4), 6, 8)) is Transcoder
    with pytest.raises(CircuitDBError, match="an SAE reconstructs its input"):
        SparseCoder(DictionaryConfig(kind="sae", n_latents=16, k=4), 6, 8)


def test_every_activation_the_config_names_is_one_class() -> None:
    import typing

    from circuitdb.config import ActivationName, load_config
    from circuitdb.dictionaries.activations import activations, make_activation

    assert sorted(activations()) == sorted(typing.get_args(ActivationName))
    for name, cls in activations().items():
        assert type(make_activation(DictionaryConfig(activation=name, n_latents=16, k=4))) is cls
    with pytest.raises(CircuitDBError, match="dictionaries.dictionary.activation must be one of topk, batchtopk"):
        load_config(None, {"dictionaries.dictionary.activation": "gelu"})

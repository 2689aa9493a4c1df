"""Hook points are where their names say: checked against the model's own hidden states and modules."""

from __future__ import annotations

import pytest
import torch

from circuitdb.errors import CircuitDBError
from circuitdb.models import HookPoint, LoadedModel, capture, resolve_hooks

ALL_KINDS = ("resid_pre", "attn_out", "mlp_in", "mlp_out", "resid_post")


def _ids(lm: LoadedModel) -> torch.Tensor:
    texts = ["The quick brown fox jumps over the lazy dog.", "def function(argument): return argument * 2"]
    return torch.tensor([lm.encode(t)[:10] for t in texts])


def test_hooks_match_hidden_states_and_modules(any_architecture: LoadedModel) -> None:
    """On every architecture: mlp_in is the MLP's input, mlp_out and attn_out what the sublayers add to the
    residual (after Gemma's post-norms), and the parts sum to resid_post."""
    tiny = any_architecture
    ids = _ids(tiny)
    hooks = resolve_hooks(tiny, [f"{k}.{layer}" for k in ALL_KINDS for layer in range(tiny.n_layers)])
    acts = capture(tiny, ids, hooks)
    with torch.no_grad():
        hidden = tiny.model(input_ids=ids, output_hidden_states=True).hidden_states
    final_norm = tiny.model.get_submodule(tiny.arch.final_norm)
    assert torch.allclose(acts["resid_pre.0"], hidden[0], atol=1e-5)
    for layer in range(tiny.n_layers):
        post = acts[f"resid_post.{layer}"]
        if layer + 1 < tiny.n_layers:
            assert torch.allclose(post, hidden[layer + 1], atol=1e-5)
            assert torch.allclose(acts[f"resid_pre.{layer + 1}"], post)
        else:  # HF applies the final norm to the last hidden state; our resid_post is before it
            assert torch.allclose(final_norm(post), hidden[layer + 1], atol=1e-5)
        parts = acts[f"resid_pre.{layer}"] + acts[f"attn_out.{layer}"] + acts[f"mlp_out.{layer}"]
        assert torch.allclose(post, parts, atol=1e-5)
        block = tiny.block(layer)
        mlp = block.get_submodule(tiny.arch.mlp)
        post_norm = block.get_submodule(tiny.arch.mlp_out_norm) if tiny.arch.mlp_out_norm else torch.nn.Identity()
        with torch.no_grad():
            assert torch.allclose(post_norm(mlp(acts[f"mlp_in.{layer}"])), acts[f"mlp_out.{layer}"], atol=1e-6)
        assert not torch.allclose(acts[f"mlp_in.{layer}"], acts[f"resid_pre.{layer}"] + acts[f"attn_out.{layer}"])


def test_forward_stops_after_deepest_hook(tiny: LoadedModel) -> None:
    calls: list[str] = []
    handles = [
        tiny.block(1).register_forward_hook(lambda *a: calls.append("block1")),
        tiny.block(0).get_submodule(tiny.arch.mlp).register_forward_hook(lambda *a: calls.append("mlp0")),
        tiny.model.get_submodule(tiny.arch.unembedding).register_forward_hook(lambda *a: calls.append("head")),
    ]
    try:
        acts = capture(tiny, _ids(tiny), resolve_hooks(tiny, ["attn_out.0"]))
        assert calls == [] and set(acts) == {"attn_out.0"}
        capture(tiny, _ids(tiny), resolve_hooks(tiny, [f"resid_post.{tiny.n_layers - 1}"]))
        assert "head" not in calls and "block1" in calls
    finally:
        for handle in handles:
            handle.remove()


def test_bad_hook_names_and_layers(llama: LoadedModel) -> None:
    with pytest.raises(CircuitDBError, match="unknown hook point"):
        HookPoint.parse("mlp_middle.0")
    with pytest.raises(CircuitDBError, match="unknown hook point"):
        HookPoint.parse("mlp_in")
    with pytest.raises(CircuitDBError, match=r"layer 3 out of range: .* has 3 layers \(0-2\)"):
        resolve_hooks(llama, ["mlp_in.3"])
    assert [h.name for h in resolve_hooks(llama, ["mlp_out.1", "resid_pre.1", "mlp_in.0"])] == [
        "mlp_in.0",
        "resid_pre.1",
        "mlp_out.1",
    ]


def test_replacing_a_hook_point_changes_what_capture_reads(any_architecture: LoadedModel) -> None:
    """Each kind is replaced where it is read: a replacement sees the captured activation, and the model's logits
    move as they do when that activation is doubled (identity leaves them alone)."""
    from circuitdb.models import replaced

    lm, ids = any_architecture, _ids(any_architecture)
    clean = lm.model(input_ids=ids).logits
    for kind in ALL_KINDS:
        hook = HookPoint.make(kind, 1)
        captured = capture(lm, ids, [hook])[hook.name]
        seen: list[torch.Tensor] = []
        with replaced(lm, hook, lambda x, seen=seen: seen.append(x.detach().clone()) or x):
            same = lm.model(input_ids=ids).logits
        torch.testing.assert_close(seen[0], captured)
        torch.testing.assert_close(same, clean)
        with replaced(lm, hook, lambda x: 2 * x):
            doubled = lm.model(input_ids=ids).logits
        assert not torch.allclose(doubled, clean), kind

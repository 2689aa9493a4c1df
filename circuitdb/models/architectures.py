"""Where each architecture keeps the modules our hook points sit on.

Every supported block has the same shape: `resid_pre → norm → attention → (+) → norm → MLP → (+)`.
So five hook points per layer are defined by four module paths, and adding an architecture is one
row in `ARCHITECTURES`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Architecture:
    layers: str
    """Path of the ModuleList of decoder blocks, from the CausalLM."""
    attention: str
    """Attention module inside a block; its first output is `attn_out`."""
    mlp: str
    """MLP module inside a block; its input is `mlp_in`, its output `mlp_out`."""
    final_norm: str
    """Norm applied to the last residual before the unembedding."""
    embedding: str
    """Token embedding module."""
    attention_norm: str = "input_layernorm"
    """Norm inside a block before attention."""
    mlp_norm: str = "post_attention_layernorm"
    """Norm inside a block before the MLP (its output is `mlp_in`)."""
    unembedding: str = "lm_head"
    """Output projection to the vocabulary."""


_LLAMA_LIKE = Architecture(
    layers="model.layers", attention="self_attn", mlp="mlp", final_norm="model.norm", embedding="model.embed_tokens"
)

ARCHITECTURES: dict[str, Architecture] = {
    "llama": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "gpt2": Architecture(
        layers="transformer.h",
        attention="attn",
        mlp="mlp",
        final_norm="transformer.ln_f",
        embedding="transformer.wte",
        attention_norm="ln_1",
        mlp_norm="ln_2",
    ),
}
"""Keyed by the Hugging Face config's `model_type`. SmolLM models report `llama`."""

"""Where each architecture keeps the modules our hook points sit on.

Every supported block has the same shape: `resid_pre → norm → attention [→ norm] → (+) → norm → MLP
[→ norm] → (+)`, the bracketed norms being Gemma's post-norms. So five hook points per layer are defined
by a few module paths: `attn_out` and `mlp_out` are always what the sublayer adds to the residual (the
post-norm's output where there is one), `mlp_in` the MLP's input. Adding an architecture is one row in
`ARCHITECTURES`.
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
    attention_out_norm: str | None = None
    """Norm on the attention output before it joins the residual (Gemma's post-attention norm)."""
    mlp_out_norm: str | None = None
    """Norm on the MLP output before it joins the residual (Gemma's post-feedforward norm)."""
    norm_offset: float = 0.0
    """Norms scale by (offset + weight): Gemma stores its RMSNorm weights around 0 and adds 1."""

    @property
    def attn_out_module(self) -> str:
        """The module whose output is `attn_out`."""
        return self.attention_out_norm or self.attention

    @property
    def mlp_out_module(self) -> str:
        """The module whose output is `mlp_out`."""
        return self.mlp_out_norm or self.mlp


_LLAMA_LIKE = Architecture(
    layers="model.layers", attention="self_attn", mlp="mlp", final_norm="model.norm", embedding="model.embed_tokens"
)

_GEMMA = Architecture(
    layers="model.layers",
    attention="self_attn",
    mlp="mlp",
    final_norm="model.norm",
    embedding="model.embed_tokens",
    mlp_norm="pre_feedforward_layernorm",
    attention_out_norm="post_attention_layernorm",
    mlp_out_norm="post_feedforward_layernorm",
    norm_offset=1.0,
)
"""Gemma-2 and Gemma-3: (1 + w) RMSNorms, post-norms on both sublayers; the √d embedding scale lives in the
embedding module, so the embedding module's output is what a token writes."""

ARCHITECTURES: dict[str, Architecture] = {
    "llama": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "gemma2": _GEMMA,
    "gemma3_text": _GEMMA,
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

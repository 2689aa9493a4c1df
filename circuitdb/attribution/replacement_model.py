"""The replacement model of one prompt: the model made linear from feature activations to logits.

On the prompt, the model runs once normally (`trace`), recording each attention pattern, each
norm's denominator, and each MLP's input and output. In the *replacement model*:
- attention patterns and norm denominators are frozen at those values (constants, no gradient);
- each MLP output becomes its transcoders' reconstruction plus an **error** term, the part the
  transcoders missed, held constant (so with errors the replacement reproduces the model exactly);
- the leading positions (`start_positions`: the BOS attention sink; Gemma-3-IT's chat prefix
  `<bos><start_of_turn>user\n`) have no features: the dictionaries were trained without them. Their MLP
  errors are either constants of the graph (circuit-tracer's `zero_positions` rule: no error node there,
  what the MLP wrote is a fixed bias like the transcoders' b_dec) or error nodes (`start_error_nodes`).
Everything between feature activations and logits is then linear, which is what makes the direct
effects of `graph.py` exact. `run` replays the model through Hugging Face's own modules in this
frozen state; tests measure edges with it by finite differences, independently of `graph.py`.

Freezing works without forking model code: attention goes through a registered attention function
that uses the recorded pattern, and norms through a forward hook that applies the recorded 1/rms.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial

import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.masking_utils import eager_mask

from circuitdb.attribution.transcoders import Transcoders
from circuitdb.errors import CircuitDBError
from circuitdb.models import LoadedModel
from circuitdb.models.hooks import replace_mlp_out

ATTENTION = "circuitdb_frozen"


@dataclass
class _Freezer:
    """What the registered attention function and norm hooks read: record, or replay recorded values."""

    record: bool = True
    patterns: dict[int, torch.Tensor] = field(default_factory=dict)
    scales: dict[str, torch.Tensor] = field(default_factory=dict)


_ACTIVE: list[_Freezer] = []


def _frozen_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, softcap=None, **kwargs):
    """Eager attention that records its softmax pattern, or replays a recorded one (detached).
    Gemma's attention-logit soft-cap and sliding windows (in the mask) shape the recorded pattern only."""
    state = _ACTIVE[-1]
    groups = query.shape[1] // value.shape[1]
    value = value.repeat_interleave(groups, dim=1)
    if state.record:
        scores = query @ key.repeat_interleave(groups, dim=1).transpose(2, 3) * scaling
        if softcap is not None:
            scores = torch.tanh(scores / softcap) * softcap
        if attention_mask is not None:
            scores = scores + attention_mask[..., : key.shape[-2]]
        pattern = scores.softmax(dim=-1, dtype=torch.float32).to(query.dtype)
        state.patterns[module.layer_idx] = pattern[0].detach()
    else:
        pattern = state.patterns[module.layer_idx].unsqueeze(0)
    return (pattern @ value).transpose(1, 2).contiguous(), pattern


AttentionInterface.register(ATTENTION, _frozen_attention)
AttentionMaskInterface.register(ATTENTION, eager_mask)


def is_centred(norm: torch.nn.Module) -> bool:
    """LayerNorm subtracts the mean (a linear map, kept live); RMSNorm does not."""
    return isinstance(norm, torch.nn.LayerNorm)


def _norm_hook(path: str, gain: torch.Tensor):
    """RMSNorm / LayerNorm with its 1/rms (1/std) recorded on the prompt and replayed as a constant."""

    def hook(module, args, output):
        state = _ACTIVE[-1]
        x = args[0]
        if is_centred(module):
            x = x - x.mean(-1, keepdim=True)
        if state.record:
            eps = getattr(module, "variance_epsilon", None) or module.eps
            scale = torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)
            state.scales[path] = scale[0].detach()
        out = gain * (x * state.scales[path].to(x.dtype))
        return out + module.bias if getattr(module, "bias", None) is not None else out

    return hook


def norm_paths(lm: LoadedModel) -> dict[str, torch.nn.Module]:
    """Every norm the replacement model freezes, by the key its scale is recorded under."""
    norms = {"final": lm.model.get_submodule(lm.arch.final_norm)}
    for layer in range(lm.n_layers):
        block = lm.block(layer)
        norms[f"{layer}.attention"] = block.get_submodule(lm.arch.attention_norm)
        norms[f"{layer}.mlp"] = block.get_submodule(lm.arch.mlp_norm)
        for key, path in (("attention_out", lm.arch.attention_out_norm), ("mlp_out", lm.arch.mlp_out_norm)):
            if path is not None:
                norms[f"{layer}.{key}"] = block.get_submodule(path)
    return norms


@contextmanager
def _frozen(lm: LoadedModel, state: _Freezer) -> Iterator[None]:
    """Within: attention and norms of `lm` record into / replay from `state`."""
    previous = lm.model.config._attn_implementation
    handles = [
        module.register_forward_hook(_norm_hook(path, lm.norm_gain(module))) for path, module in norm_paths(lm).items()
    ]
    lm.model.set_attn_implementation(ATTENTION)
    _ACTIVE.append(state)
    try:
        yield
    finally:
        _ACTIVE.pop()
        lm.model.set_attn_implementation(previous)
        for handle in handles:
            handle.remove()


@contextmanager
def logits_before_softcap(lm: LoadedModel) -> Iterator[None]:
    """Within: the model returns its logits before Gemma's final soft-cap (tanh), the quantity graph edges
    end at (as circuit-tracer's do); a no-op for models without one."""
    config = lm.model.config
    cap = getattr(config, "final_logit_softcapping", None)
    if cap is None:
        yield
        return
    config.final_logit_softcapping = None
    try:
        yield
    finally:
        config.final_logit_softcapping = cap


MlpFn = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]
"""(layer, mlp_in [positions, d], mlp_out [positions, d]) → the MLP output to use instead."""


def _one_sequence(mlp: MlpFn, layer: int, mlp_in: torch.Tensor, mlp_out: torch.Tensor) -> torch.Tensor:
    """`mlp` on the one sequence of a batch of one: [1, P, d] in and out."""
    return mlp(layer, mlp_in[0], mlp_out[0]).unsqueeze(0)


def forward(
    lm: LoadedModel,
    ids: torch.Tensor,
    mlp: MlpFn | None = None,
    freezer: _Freezer | None = None,
    inputs_embeds: torch.Tensor | None = None,
) -> torch.Tensor:
    """Logits [positions, vocab] of one sequence, MLP outputs rewritten by `mlp`, attention and norms
    frozen to `freezer` when given (recording into it when `freezer.record`)."""
    with ExitStack() as stack:
        if freezer is not None:
            stack.enter_context(_frozen(lm, freezer))
        if mlp is not None:
            for layer in range(lm.n_layers):
                for handle in replace_mlp_out(lm, layer, partial(_one_sequence, mlp, layer)):
                    stack.callback(handle.remove)
        if inputs_embeds is not None:
            out = lm.model(inputs_embeds=inputs_embeds.unsqueeze(0), use_cache=False)
        else:
            out = lm.model(input_ids=ids.unsqueeze(0).to(lm.device), use_cache=False)
    return out.logits[0]


@dataclass
class Features:
    """Active features of a prompt, ordered by (layer, position, index)."""

    layer: torch.Tensor
    position: torch.Tensor
    index: torch.Tensor
    activation: torch.Tensor

    def __len__(self) -> int:
        return len(self.layer)

    def dense(self, layer: int, positions: int, n_latents: int) -> torch.Tensor:
        """Latents of `layer` as a dense [positions, n_latents] tensor."""
        mask = self.layer == layer
        out = torch.zeros(positions, n_latents, dtype=self.activation.dtype, device=self.activation.device)
        out[self.position[mask], self.index[mask]] = self.activation[mask]
        return out


@dataclass
class ReplacementModel:
    """One prompt traced through the model, with everything the frozen linear replacement needs."""

    lm: LoadedModel
    transcoders: Transcoders
    ids: torch.Tensor
    """Token ids [positions], BOS first."""
    freezer: _Freezer
    mlp_in: torch.Tensor
    """[layers, positions, d]"""
    mlp_out: torch.Tensor
    """[layers, positions, d]: the model's own MLP outputs."""
    logits: torch.Tensor
    """[positions, vocab]: the model's own logits."""
    features: Features
    errors: torch.Tensor
    """[layers, positions, d]: the error nodes' vectors, mlp_out minus the transcoders' reconstruction (all of
    mlp_out where uncovered); zero at the leading positions when those are constants."""
    constants: torch.Tensor
    """[layers, positions, d]: the errors of the leading positions when they are constants of the graph
    (else zero): always added, whether error nodes are on or not."""
    n_latents: int
    start_positions: int
    """Leading positions without features (and, unless their errors are nodes, without error nodes)."""

    @property
    def n_positions(self) -> int:
        return len(self.ids)

    def latents(self, features: Features | None = None) -> dict[int, torch.Tensor]:
        features = features or self.features
        return {layer: features.dense(layer, self.n_positions, self.n_latents) for layer in self.transcoders.layers}

    def reconstruction(self, layer: int, mlp_in: torch.Tensor, latents: dict[int, torch.Tensor]) -> torch.Tensor:
        if layer not in self.transcoders.layers:
            return torch.zeros_like(mlp_in)
        return self.transcoders.reconstruct(layer, mlp_in, latents)

    @torch.no_grad()
    def run(
        self,
        features: Features | None = None,
        errors: bool = True,
        inputs_embeds: torch.Tensor | None = None,
        read: Callable[[int, torch.Tensor], None] | None = None,
    ) -> torch.Tensor:
        """Logits of the frozen replacement model with feature activations fixed to `features` (default:
        the prompt's own), error nodes included or not (the leading positions' constants always are);
        `read(layer, mlp_in)` sees each layer's MLP input."""
        latents = self.latents(features)

        def mlp(layer: int, mlp_in: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
            if read is not None:
                read(layer, mlp_in)
            out = self.reconstruction(layer, mlp_in, latents) + self.constants[layer]
            return out + self.errors[layer] if errors else out

        return forward(self.lm, self.ids, mlp, self.freezer, inputs_embeds)


def start_positions(lm: LoadedModel) -> int:
    """circuit-tracer's rule for the leading positions that are constants of the graph: Gemma-3
    instruction-tuned models' `<bos><start_of_turn>user\n` (its GemmaScope-2 IT transcoders were trained
    without them), else the first token (BOS, the attention sink)."""
    gemma3 = lm.config.model_type in ("gemma3", "gemma3_text")
    return 4 if gemma3 and lm.name.rstrip("/").lower().endswith("-it") else 1


@torch.no_grad()
def trace(
    lm: LoadedModel,
    ids: list[int] | torch.Tensor,
    transcoders: Transcoders,
    start: int = 1,
    start_error_nodes: bool = True,
) -> ReplacementModel:
    """Run the prompt once, record what the replacement model freezes, and find the active features.

    The first `start` positions have no features; their MLP errors are error nodes (`start_error_nodes`,
    the literal replacement model) or constants of the graph (circuit-tracer's rule: the pipeline's
    default, `AttributionConfig.start_error_nodes` False)."""
    transcoders.check_model(lm)
    ids = torch.as_tensor(ids, dtype=torch.long)
    if len(ids) <= start:
        raise CircuitDBError(f"the prompt has {len(ids)} tokens; the first {start} are constants of the graph")
    dtype = next(lm.model.parameters()).dtype
    transcoders.to(lm.device, dtype)
    mlp_in = torch.zeros(lm.n_layers, len(ids), lm.d_model, dtype=dtype, device=lm.device)
    mlp_out = torch.zeros_like(mlp_in)

    def record(layer: int, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        mlp_in[layer], mlp_out[layer] = x, out
        return out

    freezer = _Freezer(record=True)
    logits = forward(lm, ids, record, freezer)
    freezer.record = False  # from here on every forward replays the prompt's patterns and norms
    latents, parts = {}, []
    for layer in transcoders.layers:
        latents[layer] = transcoders.encode(layer, mlp_in[layer])
        latents[layer][:start] = 0  # the leading positions are left to their errors
        position, index = latents[layer].nonzero(as_tuple=True)
        parts.append((torch.full_like(position, layer), position, index, latents[layer][position, index]))
    features = Features(*(torch.cat(column) for column in zip(*parts, strict=True)))
    errors = mlp_out.clone()
    for layer in transcoders.layers:
        errors[layer] = mlp_out[layer] - transcoders.reconstruct(layer, mlp_in[layer], latents)
    constants = torch.zeros_like(errors)
    if not start_error_nodes:
        constants[:, :start] = errors[:, :start]
        errors[:, :start] = 0
    n_latents = latents[transcoders.layers[0]].shape[-1]
    return ReplacementModel(
        lm, transcoders, ids, freezer, mlp_in, mlp_out, logits, features, errors, constants, n_latents, start
    )

"""Interventions: set, scale or zero features and see what the model does.

The model runs with its own MLPs; an intervened feature's change (new value − its value on this
run) times its decoder rows is added to the MLP outputs it writes to. With no intervention the
model is untouched, so every difference is the intervention's. Options:
- `freeze_attention`: attention patterns and norm denominators keep their values on the clean prompt;
- `frozen_layers`: these layers' MLPs are the replacement model's (clean feature activations, the
  transcoder's linear skip, clean error), so effects cannot travel through other features there.
Frozen attention with every layer frozen is the linear replacement model, in which zeroing a
feature moves a logit by exactly minus its edge.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from circuitdb.attribution.graph import Graph
from circuitdb.attribution.replacement_model import ReplacementModel, forward, logits_before_softcap
from circuitdb.errors import CircuitDBError


@dataclass
class Intervention:
    layer: int
    index: int
    mode: str = "scale"
    """'set' (to value), 'scale' (by value) or 'zero'."""
    value: float = 0.0
    positions: list[int] | None = None
    """Positions to act on; None: every position but 0, including generated tokens."""

    def __post_init__(self) -> None:
        if self.mode not in ("set", "scale", "zero"):
            raise CircuitDBError(f"unknown intervention {self.mode!r}; expected set, scale or zero")

    def new_values(self, current: torch.Tensor) -> torch.Tensor:
        if self.mode == "zero":
            return torch.zeros_like(current)
        if self.mode == "scale":
            return current * self.value
        return torch.full_like(current, self.value)


@dataclass
class InterventionResult:
    logits: torch.Tensor
    """[positions, vocab] with the interventions."""
    clean_logits: torch.Tensor
    """[positions, vocab] of the unmodified model."""
    generated: list[int]
    """Token ids sampled greedily after the prompt while intervening (empty unless asked)."""


def _mlp_with(rm: ReplacementModel, interventions: list[Intervention], frozen_layers: set[int], positions: int):
    """The MLP rewrite applying `interventions` (deltas carried to every layer a latent writes to)."""
    tc = rm.transcoders
    traced = rm.latents()
    pending: dict[int, torch.Tensor] = {}

    def mlp(layer: int, mlp_in: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        if layer == 0:
            pending.clear()
        frozen = layer in frozen_layers
        if frozen:  # the replacement model's MLP: clean latents, live linear skip, clean error
            out = rm.reconstruction(layer, mlp_in, traced) + rm.errors[layer] + rm.constants[layer]
        mine = [i for i in interventions if i.layer == layer]
        if mine:
            latents = traced[layer] if frozen else tc.encode(layer, mlp_in)
            for item in mine:
                where = torch.arange(1, positions) if item.positions is None else torch.tensor(item.positions)
                where = where.to(mlp_in.device)
                where = where[where < positions]
                current = latents[where, item.index]
                delta = item.new_values(current) - current
                index = torch.tensor([item.index], device=mlp_in.device)
                for target, rows in tc.writes(layer, index).items():
                    write = torch.zeros_like(out)
                    write[where] = delta[:, None] * rows[0]
                    pending[target] = pending.get(target, 0) + write
        return out + pending.pop(layer, 0)

    return mlp


@torch.no_grad()
def intervene(
    rm: ReplacementModel,
    interventions: list[Intervention],
    freeze_attention: bool = False,
    frozen_layers: range | None = None,
    generate: int = 0,
) -> InterventionResult:
    """Run the traced prompt with `interventions`; optionally sample `generate` tokens greedily while
    intervening (live attention and MLPs for the new tokens)."""
    for item in interventions:
        if item.layer not in rm.transcoders.layers:
            raise CircuitDBError(f"no transcoder at layer {item.layer}; covered layers: {rm.transcoders.layers}")
        if not 0 <= item.index < rm.n_latents:
            raise CircuitDBError(
                f"feature index {item.index} out of range: layer {item.layer} has {rm.n_latents} latents"
            )
        if item.positions is not None and not all(0 <= p < rm.n_positions for p in item.positions):
            raise CircuitDBError(f"positions {item.positions} outside the prompt (0-{rm.n_positions - 1})")
    frozen = set(frozen_layers or ())
    freezer = rm.freezer if freeze_attention else None
    logits = forward(rm.lm, rm.ids, _mlp_with(rm, interventions, frozen, rm.n_positions), freezer)
    ids = rm.ids.tolist()
    generated: list[int] = []
    for _ in range(generate):
        next_id = int(forward(rm.lm, torch.tensor(ids), _mlp_with(rm, interventions, set(), len(ids)))[-1].argmax())
        generated.append(next_id)
        ids.append(next_id)
    return InterventionResult(logits, rm.logits, generated)


@torch.no_grad()
def validate_edges(rm: ReplacementModel, graph: Graph, n_features: int) -> list[dict]:
    """Zero each of the `n_features` features with the largest direct effect on the top logit, in the
    frozen replacement model, and compare the logit's change with minus that edge."""
    if not graph.targets_are_logits:
        raise CircuitDBError("edge validation measures logits: it checks graphs of the top logits or chosen tokens")
    row = graph.adjacency[graph.logit_start, : graph.n_features]
    token = graph.logit_tokens[0]
    f = graph.features
    checks = []
    sources = row.abs().topk(min(n_features, graph.n_features)).indices.tolist()
    with logits_before_softcap(rm.lm):  # edges end at logits before Gemma's final soft-cap
        clean = rm.run()[-1]
        zeroed = [
            intervene(
                rm,
                [Intervention(int(f.layer[s]), int(f.index[s]), "zero", positions=[int(f.position[s])])],
                True,
                range(graph.n_layers),
            ).logits[-1]
            for s in sources
        ]
    clean = clean - clean.mean()
    for source, logits in zip(sources, zeroed, strict=True):
        layer, position, index = int(f.layer[source]), int(f.position[source]), int(f.index[source])
        measured = float((logits - logits.mean())[token] - clean[token])
        predicted = -float(row[source])
        error = abs(measured - predicted) / max(abs(predicted), 1e-6)
        checks.append(
            {
                "layer": layer,
                "position": position,
                "index": index,
                "predicted": predicted,
                "measured": measured,
                "relative_error": error,
            }
        )
    return checks

"""The attribution graph: one prompt's nodes and the direct effect of every node on every later node.

Nodes, in circuit-tracer's order: active features (layer, position, index), error nodes (layer ×
position), input-token embeddings (position), targets (`targets.py`: the top logits by default; chosen
tokens, a logit difference, a direction, or one feature). `adjacency[t, s]` is the direct effect of
source s on target t in the replacement model, computed by `attribute.py`; pruning and scores
(`pruning.py`), tables and JSON (`export.py`) and interventions read this noun.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from circuitdb.attribution.replacement_model import Features
from circuitdb.attribution.targets import TOP_LOGITS, reads_logits


@dataclass
class Graph:
    """Nodes and dense adjacency [targets, sources] of one prompt; the last `n_logits` rows are logits."""

    ids: list[int]
    features: Features
    n_layers: int
    logit_tokens: list[int]
    logit_probabilities: torch.Tensor
    adjacency: torch.Tensor
    n_active_features: int
    """Active features before `max_feature_nodes` capped them."""
    target: str = TOP_LOGITS
    """What the graph explains (`Targets.description`): '' for the top logits."""
    target_labels: list[str] | None = None
    """One per target node (None: the logit tokens')."""
    target_layer: int | None = None
    """Where the targets read: None (or n_layers) for the unembedding, else a feature target's layer."""
    target_position: int | None = None
    """The targets' position (None: the last)."""

    @property
    def read_layers(self) -> torch.Tensor:
        """Where each node reads the residual stream: a feature at its layer, a target at `target_layer` (the
        unembedding: n_layers); errors and tokens read nothing (−1: their rows are empty)."""
        device = self.features.layer.device
        n_targets = len(self.logit_tokens)
        target = self.n_layers if self.target_layer is None else self.target_layer
        nothing = torch.full((self.logit_start - self.error_start,), -1, dtype=torch.long, device=device)
        return torch.cat([self.features.layer, nothing, torch.full((n_targets,), target, device=device)])

    @property
    def n_positions(self) -> int:
        return len(self.ids)

    @property
    def n_features(self) -> int:
        return len(self.features)

    @property
    def error_start(self) -> int:
        return self.n_features

    @property
    def token_start(self) -> int:
        return self.n_features + self.n_layers * self.n_positions

    @property
    def logit_start(self) -> int:
        return self.token_start + self.n_positions

    @property
    def n_nodes(self) -> int:
        return self.logit_start + len(self.logit_tokens)

    @property
    def targets_are_logits(self) -> bool:
        """Whether every target node is a next-token logit with its probability."""
        return reads_logits(self.target)

    @property
    def target_at(self) -> tuple[int, int]:
        """(layer, position) the targets read at: (n_layers, last) for the unembedding."""
        layer = self.n_layers if self.target_layer is None else self.target_layer
        return layer, self.n_positions - 1 if self.target_position is None else self.target_position

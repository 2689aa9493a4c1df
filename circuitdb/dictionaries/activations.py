"""Sparsifying activation functions, one module each: TopK, BatchTopK, JumpReLU and ReLU.

A coder holds its activation as a module (`coder.activation`), built from the config by
`make_activation`; nothing else switches on the activation's name. Each module owns:
- `forward(pre)`: latent activations from pre-activations [tokens, latents];
- `penalty(pre, latents, decoder_norms)`: its sparsity loss (zero for the TopK family, whose
  sparsity is structural);
- `export_threshold()`: the per-latent threshold that makes it a plain JumpReLU at inference, for
  file formats that know only TopK, ReLU and JumpReLU (`None` where it needs none);
- `family`: which of those three it is at inference, the name formats translate;
- `k`: set only when every token keeps exactly its k largest pre-activations, so winners can be
  picked sparsely (training's sparse path, read-only passes);
- `unit_decoder` / `revives_dead`: the TopK family keeps unit decoder rows and trains AuxK.
Adding an activation is one class here, named by its `name`, and that name in the config's
`ActivationName` (the configuration is checked without importing torch).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from torch import nn

from circuitdb.config import ActivationName, DictionaryConfig

Family = Literal["topk", "relu", "jumprelu"]


class Activation(nn.Module):
    name: ClassVar[ActivationName]
    """What `DictionaryConfig.activation` calls it."""
    family: ClassVar[Family]
    k: int | None = None
    unit_decoder: ClassVar[bool] = False
    revives_dead: ClassVar[bool] = False

    @classmethod
    def from_config(cls, cfg: DictionaryConfig) -> Activation:
        raise NotImplementedError

    def penalty(self, pre: torch.Tensor, latents: torch.Tensor, decoder_norms: torch.Tensor) -> torch.Tensor:
        """Sparsity loss for a batch; `decoder_norms` [latents] weighs each latent's output."""
        return torch.zeros((), device=pre.device)

    def export_threshold(self) -> torch.Tensor | None:
        return None


def topk(pre: torch.Tensor, k: int) -> torch.Tensor:
    """Keep each token's k largest pre-activations (ReLU'd), zero the rest."""
    values, indices = pre.topk(k, dim=-1, sorted=False)
    return torch.zeros_like(pre).scatter_(-1, indices, values.relu())


class TopK(Activation):
    """Each token keeps its k largest pre-activations."""

    name = "topk"
    family = "topk"
    unit_decoder = True
    revives_dead = True

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    @classmethod
    def from_config(cls, cfg: DictionaryConfig) -> TopK:
        return cls(cfg.k)

    def forward(self, pre: torch.Tensor) -> torch.Tensor:
        return topk(pre, self.k)


class BatchTopK(Activation):
    """TopK over the whole batch (k × tokens winners), so busy tokens may use more latents than quiet ones.

    At inference a single threshold replaces the batch: a running mean of the smallest winning
    value seen in training, which makes the encoder a plain JumpReLU with a shared threshold.
    """

    name = "batchtopk"
    family = "jumprelu"
    unit_decoder = True
    revives_dead = True

    def __init__(self, k_per_token: int, n_latents: int) -> None:
        super().__init__()
        self.k_per_token, self.n_latents = k_per_token, n_latents
        self.register_buffer("threshold", torch.tensor(-1.0))

    @classmethod
    def from_config(cls, cfg: DictionaryConfig) -> BatchTopK:
        return cls(cfg.k, cfg.n_latents)

    def forward(self, pre: torch.Tensor) -> torch.Tensor:
        pre = pre.relu()
        if not self.training:
            return torch.where(pre > self.threshold, pre, torch.zeros_like(pre))
        flat = pre.flatten()
        values, indices = flat.topk(min(self.k_per_token * pre.shape[0], flat.numel()), sorted=False)
        with torch.no_grad():
            smallest = values.min()
            momentum = 0.01 if self.threshold >= 0 else 1.0
            self.threshold.lerp_(smallest, momentum)
        return torch.zeros_like(flat).scatter_(0, indices, values).view_as(pre)

    def export_threshold(self) -> torch.Tensor:
        return self.threshold.detach().expand(self.n_latents).clone()


class ReLU(Activation):
    """ReLU with an L1 penalty on activations weighted by decoder norms (so shrinking rows can't cheat)."""

    name = "relu"
    family = "relu"

    def __init__(self, coefficient: float = 0.0) -> None:
        super().__init__()
        self.coefficient = coefficient

    @classmethod
    def from_config(cls, cfg: DictionaryConfig) -> ReLU:
        return cls(cfg.sparsity_coefficient)

    def forward(self, pre: torch.Tensor) -> torch.Tensor:
        return pre.relu()

    def penalty(self, pre: torch.Tensor, latents: torch.Tensor, decoder_norms: torch.Tensor) -> torch.Tensor:
        return self.coefficient * (latents * decoder_norms).sum(-1).mean()


def _window(pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """Rectangle kernel K((z − θ)/ε)/ε: the pseudo-derivative of the step at θ."""
    return ((pre - threshold).abs() < bandwidth / 2).to(pre.dtype) / bandwidth


class _JumpReLUFn(torch.autograd.Function):
    """z · H(z − θ); ∂/∂z = H(z − θ), ∂/∂θ = −θ · K((z − θ)/ε)/ε (Rajamanoharan et al., 2024)."""

    @staticmethod
    def forward(ctx, pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        pre, threshold = ctx.saved_tensors
        grad_threshold = -(threshold * _window(pre, threshold, ctx.bandwidth) * grad).sum(0)
        return grad * (pre > threshold), grad_threshold, None


class _StepFn(torch.autograd.Function):
    """H(z − θ) for the L0 penalty; ∂/∂θ = −K((z − θ)/ε)/ε, no gradient to z."""

    @staticmethod
    def forward(ctx, pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        pre, threshold = ctx.saved_tensors
        return None, -(_window(pre, threshold, ctx.bandwidth) * grad).sum(0), None


class JumpReLU(Activation):
    """z · H(z − θ) with a learned per-latent threshold θ (kept positive through its log); L0 penalty."""

    name = "jumprelu"
    family = "jumprelu"

    def __init__(
        self, n_latents: int, initial_threshold: float = 1e-3, bandwidth: float = 1e-3, coefficient: float = 0.0
    ) -> None:
        super().__init__()
        self.log_threshold = nn.Parameter(torch.full((n_latents,), initial_threshold).log())
        self.bandwidth, self.coefficient = bandwidth, coefficient

    @classmethod
    def from_config(cls, cfg: DictionaryConfig) -> JumpReLU:
        return cls(cfg.n_latents, cfg.jumprelu_threshold, coefficient=cfg.sparsity_coefficient)

    def forward(self, pre: torch.Tensor) -> torch.Tensor:
        return _JumpReLUFn.apply(pre, self.log_threshold.exp(), self.bandwidth)

    def l0(self, pre: torch.Tensor) -> torch.Tensor:
        """Mean active latents per token, differentiable in θ."""
        return _StepFn.apply(pre, self.log_threshold.exp(), self.bandwidth).sum(-1).mean()

    def penalty(self, pre: torch.Tensor, latents: torch.Tensor, decoder_norms: torch.Tensor) -> torch.Tensor:
        return self.coefficient * self.l0(pre)

    def export_threshold(self) -> torch.Tensor:
        return self.log_threshold.exp().detach()

    @torch.no_grad()
    def set_threshold(self, threshold: torch.Tensor) -> JumpReLU:
        """Thresholds read from a file (zero or negative ones act as a ReLU, up to 1e-12)."""
        self.log_threshold.copy_(threshold.float().clamp_min(1e-12).log())
        return self


def activations() -> dict[str, type[Activation]]:
    """Every activation class of this module, by its name."""
    return {cls.name: cls for cls in Activation.__subclasses__()}


def make_activation(cfg: DictionaryConfig) -> Activation:
    """The activation module a coder of `cfg` injects."""
    return activations()[cfg.activation].from_config(cfg)

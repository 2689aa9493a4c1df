"""Sparsifying activation functions: TopK, BatchTopK, JumpReLU and ReLU (with an L1 penalty).

Each takes pre-activations [tokens, latents] and returns latent activations of the same shape.
"""

from __future__ import annotations

import torch
from torch import nn


def topk(pre: torch.Tensor, k: int) -> torch.Tensor:
    """Keep each token's k largest pre-activations (ReLU'd), zero the rest."""
    values, indices = pre.topk(k, dim=-1, sorted=False)
    return torch.zeros_like(pre).scatter_(-1, indices, values.relu())


class BatchTopK(nn.Module):
    """TopK over the whole batch (k × tokens winners), so busy tokens may use more latents than quiet ones.

    At inference a single threshold replaces the batch: a running mean of the smallest winning
    value seen in training, which makes the encoder a plain JumpReLU with a shared threshold.
    """

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k
        self.register_buffer("threshold", torch.tensor(-1.0))

    def forward(self, pre: torch.Tensor) -> torch.Tensor:
        pre = pre.relu()
        if not self.training:
            return torch.where(pre > self.threshold, pre, torch.zeros_like(pre))
        flat = pre.flatten()
        values, indices = flat.topk(min(self.k * pre.shape[0], flat.numel()), sorted=False)
        with torch.no_grad():
            smallest = values.min()
            momentum = 0.01 if self.threshold >= 0 else 1.0
            self.threshold.lerp_(smallest, momentum)
        return torch.zeros_like(flat).scatter_(0, indices, values).view_as(pre)


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


class JumpReLU(nn.Module):
    """z · H(z − θ) with a learned per-latent threshold θ (kept positive through its log)."""

    def __init__(self, n_latents: int, initial_threshold: float = 1e-3, bandwidth: float = 1e-3) -> None:
        super().__init__()
        self.log_threshold = nn.Parameter(torch.full((n_latents,), initial_threshold).log())
        self.bandwidth = bandwidth

    def forward(self, pre: torch.Tensor) -> torch.Tensor:
        return _JumpReLUFn.apply(pre, self.log_threshold.exp(), self.bandwidth)

    def l0(self, pre: torch.Tensor) -> torch.Tensor:
        """Mean active latents per token, differentiable in θ: the JumpReLU sparsity loss."""
        return _StepFn.apply(pre, self.log_threshold.exp(), self.bandwidth).sum(-1).mean()

"""Cross-layer transcoder (CLT): latents read at mlp_in.l and write to mlp_out of every layer ≥ l.

    pre_l  = W_enc[l] · x_l + b_enc[l]                 W_enc: [L, n_latents, d]
    f_l    = activation_l(pre_l)                       one injected activation module per source layer
    ŷ_t    = Σ_{l ≤ t} f_l · W_dec[l][:, t − l] + b_dec[t]    W_dec[l]: [n_latents, L − l, d]

The decoder layout is circuit-tracer's (one tensor per source layer, its target layers in order),
so its CLT files map onto these parameters directly.
"""

from __future__ import annotations

import torch
from torch import nn

from circuitdb.config import DictionaryConfig
from circuitdb.dictionaries.activations import make_activation
from circuitdb.errors import CircuitDBError


class CrossLayerTranscoder(nn.Module):
    kind, centres_input, reconstructs_input = "clt", False, False
    """As `SparseCoder`'s: a CLT stands in for every MLP it covers."""

    def __init__(self, cfg: DictionaryConfig, n_layers: int, d: int) -> None:
        super().__init__()
        if cfg.skip:
            raise CircuitDBError("cross-layer transcoders have no skip connection")
        self.cfg, self.n_layers, self.d_in, self.d_out = cfg, n_layers, d, d
        n = cfg.n_latents
        encoder = torch.randn(n_layers, n, d)
        self.W_enc = nn.Parameter(encoder / encoder.norm(dim=-1, keepdim=True))
        self.b_enc = nn.Parameter(torch.zeros(n_layers, n))
        decoders = []
        for layer in range(n_layers):
            # each latent's writes start small and spread over its targets, so sums over sources stay O(1)
            decoder = torch.randn(n, n_layers - layer, d)
            decoders.append(nn.Parameter(decoder / decoder.norm(dim=-1, keepdim=True) / (n_layers - layer) ** 0.5))
        self.W_dec = nn.ParameterList(decoders)
        self.b_dec = nn.Parameter(torch.zeros(n_layers, d))
        self.activations = nn.ModuleList(make_activation(cfg) for _ in range(n_layers))

    def pre_activations_layer(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        return x @ self.W_enc[layer].T + self.b_enc[layer]

    def encode_layer(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """Latents [..., n_latents] of source `layer` from its mlp_in [..., d]."""
        return self.activations[layer](self.pre_activations_layer(layer, x))

    def decode_layer(self, target: int, latents: list[torch.Tensor]) -> torch.Tensor:
        """mlp_out of `target` [..., d] from the latents of sources 0..target (each [..., n_latents])."""
        out = self.b_dec[target]
        for source in range(target + 1):
            out = out + latents[source] @ self.W_dec[source][:, target - source]
        return out

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latents [tokens, L, n_latents] from mlp_in of every layer [tokens, L, d]."""
        return torch.stack([self.encode_layer(layer, x[:, layer]) for layer in range(self.n_layers)], dim=1)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Reconstruction of mlp_out of every layer [tokens, L, d]: one matmul per source layer."""
        out = self.b_dec.expand(latents.shape[0], -1, -1).clone()
        for source, decoder in enumerate(self.W_dec):
            writes = latents[:, source] @ decoder.reshape(decoder.shape[0], -1)
            out[:, source:] += writes.view(latents.shape[0], self.n_layers - source, self.d_out)
        return out

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        latents = self.encode(x)
        return self.decode(latents), latents

    def penalty(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """Each source layer's sparsity penalty, summed; a latent's weight is the norm of all its writes."""
        total = torch.zeros((), device=x.device)
        for layer, activation in enumerate(self.activations):
            norms = self.W_dec[layer].norm(dim=-1).sum(-1)  # [n_latents]
            pre = self.pre_activations_layer(layer, x[:, layer])
            total = total + activation.penalty(pre, latents[:, layer], norms)
        return total

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Unit norm for each latent's writes to all its target layers together (TopK family)."""
        for decoder in self.W_dec:
            decoder /= decoder.flatten(1).norm(dim=1).clamp_min(1e-8).view(-1, 1, 1)

    @torch.no_grad()
    def fold_input_mean(self, mean: torch.Tensor) -> None:
        """Make a CLT trained on x − mean [L, d] act on x."""
        self.b_enc -= torch.einsum("lnd,ld->ln", self.W_enc, mean)

    @torch.no_grad()
    def fold_scales(self, scale_in: torch.Tensor, scale_out: torch.Tensor) -> None:
        """Make a CLT trained on x·scale_in[l] → y·scale_out[t] act on raw activations."""
        self.W_enc *= scale_in.view(-1, 1, 1)
        for source, decoder in enumerate(self.W_dec):
            decoder /= scale_out[source:].view(1, -1, 1)
        self.b_dec /= scale_out.view(-1, 1)

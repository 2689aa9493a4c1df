"""Sparse dictionaries over one hook point: SAEs and per-layer transcoders.

    pre = W_enc · (x − b_dec·[sae]) + b_enc          W_enc: [n_latents, d_in]   (one row per latent)
    f   = activation(pre)                             an injected module: TopK | BatchTopK | JumpReLU | ReLU
    ŷ   = f · W_dec + b_dec (+ x · W_skipᵀ)           W_dec: [n_latents, d_out]  (one row per latent)

What differs between the kinds lives in their classes: an SAE (`SparseAutoencoder`) reconstructs its
input (d_in = d_out, b_dec also centres the input); a per-layer transcoder (`Transcoder`) reads
`mlp_in.l` and predicts `mlp_out.l`, optionally with a linear skip. `SparseCoder(cfg, ...)` makes the
class `cfg.kind` names. The row layouts are
circuit-tracer's, so its files map onto these tensors without transposes.

TopK runs sparse in training: the dense pre-activations are computed without autograd only to pick
each token's k winners, whose values are then recomputed with gradients from k encoder rows and
decoded with `embedding_bag`. Backward then costs O(k·d) per token instead of O(n_latents·d).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from circuitdb.config import DictionaryConfig
from circuitdb.dictionaries.activations import Activation, make_activation
from circuitdb.dictionaries.shortlist import top_products
from circuitdb.errors import CircuitDBError


class SparseCoder(nn.Module):
    kind: ClassVar[str]
    """The `DictionaryConfig.kind` this class implements."""
    centres_input: ClassVar[bool]
    """Whether the encoder reads x − b_dec (b_dec is then the input's centre, not a free output bias)."""
    reconstructs_input: ClassVar[bool]
    """Whether the target is the input itself: trained at the input's scale, spliced in at its hook point
    (else it stands in for the MLP that maps its input to its target)."""

    def __new__(cls, cfg: DictionaryConfig | None = None, *args: object, **kwargs: object) -> SparseCoder:
        """`SparseCoder(cfg, ...)` is the class of `cfg.kind` (copies and unpickling name their class)."""
        return super().__new__(cls.of_kind(cfg.kind) if cls is SparseCoder and cfg is not None else cls)

    @staticmethod
    def of_kind(kind: str) -> type[SparseCoder]:
        """The class of per-layer dictionaries of `kind` ('sae' or 'plt')."""
        kinds = {subclass.kind: subclass for subclass in SparseCoder.__subclasses__()}
        if kind not in kinds:
            raise CircuitDBError(f"a per-layer dictionary is one of {', '.join(kinds)}, not {kind!r}")
        return kinds[kind]

    def __init__(self, cfg: DictionaryConfig, d_in: int, d_out: int, activation: Activation | None = None) -> None:
        super().__init__()
        if self.reconstructs_input and d_in != d_out:
            raise CircuitDBError(f"an SAE reconstructs its input: d_in {d_in} must equal d_out {d_out}")
        self.cfg, self.d_in, self.d_out = cfg, d_in, d_out
        n = cfg.n_latents
        decoder = torch.randn(n, d_out)
        decoder /= decoder.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(decoder)
        # encoder = decoderᵀ (up to the shapes of transcoders), the init that avoids early dead latents
        encoder = decoder.clone() if d_in == d_out else torch.randn(n, d_in) / d_in**0.5
        self.W_enc = nn.Parameter(encoder)
        self.b_enc = nn.Parameter(torch.zeros(n))
        self.b_dec = nn.Parameter(torch.zeros(d_out))
        self.W_skip = nn.Parameter(torch.zeros(d_out, d_in)) if cfg.skip else None
        self.activation = activation if activation is not None else make_activation(cfg)

    def centred(self, x: torch.Tensor) -> torch.Tensor:
        """What the encoder reads of `x`."""
        return x - self.b_dec if self.centres_input else x

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        x = self.centred(x)
        flat = torch.addmm(self.b_enc, x.reshape(-1, x.shape[-1]), self.W_enc.T)  # bias fused into the product
        return flat.view(*x.shape[:-1], -1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.pre_activations(x))

    def decode(self, latents: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        out = latents @ self.W_dec + self.b_dec
        if self.W_skip is not None:
            out = out + x @ self.W_skip.T
        return out

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstruction, dense latents)."""
        latents = self.encode(x)
        return self.decode(latents, x), latents

    def sparse_topk(self, x: torch.Tensor, k: int):
        """Each token's k winners as (indices [B, k], values [B, k]) with gradients through k rows only."""
        indices = self.top_pre_activations(x, k)[1]
        centred = self.centred(x)
        rows = F.embedding(indices, self.W_enc)  # [B, k, d_in]
        values = torch.bmm(rows, centred.unsqueeze(-1)).squeeze(-1) + self.b_enc[indices]
        return indices, values.relu()

    def top_pre_activations(self, x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The k largest fp32 pre-activations of each row of `x` [B, d_in]: (values, latents), unsorted."""
        centred = self.centred(x)
        return top_products(centred.reshape(-1, centred.shape[-1]), self.W_enc, k, self.b_enc)

    @torch.no_grad()
    def active_latents(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every nonzero of `encode(x)` as (rows, latents, values), for read-only passes over many tokens.

        TopK winners are taken straight from `top_pre_activations`, without the dense scatter and
        nonzero scan of `encode`.
        """
        if self.activation.k is None:
            dense = self.encode(x)
            rows, latents = dense.nonzero(as_tuple=True)
            return rows, latents, dense[rows, latents]
        values, latents = self.top_pre_activations(x, self.activation.k)
        rows = torch.arange(len(x), device=x.device).unsqueeze(1).expand_as(latents)
        active = values > 0
        return rows[active], latents[active], values[active]

    def decode_sparse(self, indices: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Σ_j values[:, j] · W_dec[indices[:, j]], without materializing dense latents."""
        return F.embedding_bag(indices, self.W_dec, per_sample_weights=values, mode="sum")

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Unit-norm decoder rows (TopK family), so activations carry the scale."""
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8)

    @torch.no_grad()
    def fold_input_mean(self, mean: torch.Tensor) -> None:
        """Make a dictionary trained on x − mean act on x (same latents, same output)."""
        self.b_enc -= self.W_enc @ mean
        if self.W_skip is not None:
            self.b_dec -= self.W_skip @ mean

    @torch.no_grad()
    def fold_scales(self, scale_in: float, scale_out: float) -> None:
        """Make a dictionary trained on x·scale_in → y·scale_out act on raw activations (same latents)."""
        self.W_enc *= scale_in
        self.W_dec /= scale_out
        self.b_dec /= scale_out
        if self.W_skip is not None:
            self.W_skip *= scale_in / scale_out


class SparseAutoencoder(SparseCoder):
    """Reconstructs the hook point it reads."""

    kind, centres_input, reconstructs_input = "sae", True, True


class Transcoder(SparseCoder):
    """A per-layer transcoder: reads mlp_in.l, predicts mlp_out.l (what the MLP would write)."""

    kind, centres_input, reconstructs_input = "plt", False, False

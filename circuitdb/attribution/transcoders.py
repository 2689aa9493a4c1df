"""Per-layer transcoders or one cross-layer transcoder, seen the same way by the replacement model.

The replacement model needs five things of its transcoders, whatever their kind: which layers they
cover, the latents on a layer's `mlp_in`, a layer's reconstruction of `mlp_out`, what one latent
writes into each later layer, and the linear skip (if any). Layers without a transcoder keep their
whole MLP output as an error node.
"""

from __future__ import annotations

from pathlib import Path

import torch

from circuitdb.dictionaries.cross_layer_transcoder import CrossLayerTranscoder
from circuitdb.dictionaries.formats import DictionarySet, read_dictionaries
from circuitdb.dictionaries.sparse_coder import SparseCoder
from circuitdb.dictionaries.stored import stored_set
from circuitdb.errors import CircuitDBError
from circuitdb.models import LoadedModel
from circuitdb.store import Store


class Transcoders:
    def __init__(
        self,
        per_layer: dict[int, SparseCoder] | None = None,
        clt: CrossLayerTranscoder | None = None,
        name: str = "transcoders",
        sources: dict[int, str] | None = None,
    ) -> None:
        if per_layer is not None and not per_layer:
            raise CircuitDBError("no transcoders given: a transcoder set needs at least one layer")
        self.set = DictionarySet(name, "circuitdb", per_layer or {}, clt, sources=sources or {})
        if self.set.reconstructs_input:
            layer = self.set.layers[0]
            raise CircuitDBError(
                f"{self.set.source(layer)}: attribution needs transcoders (mlp_in → mlp_out), not SAEs"
            )

    @property
    def per_layer(self) -> dict[int, SparseCoder] | None:
        return self.set.coders or None

    @property
    def clt(self) -> CrossLayerTranscoder | None:
        return self.set.clt

    @property
    def name(self) -> str:
        return self.set.name

    @property
    def layers(self) -> list[int]:
        return self.set.layers

    @classmethod
    def from_set(cls, dictionaries: DictionarySet) -> Transcoders:
        """The transcoders of a set read from files; SAEs or other hook points are one clear error."""
        hooks = (dictionaries.input_kind, dictionaries.output_kind)
        if not dictionaries.reconstructs_input and hooks != ("mlp_in", "mlp_out"):
            raise CircuitDBError(
                f"{dictionaries.name}: maps {hooks[0]} → {hooks[1]}; attribution needs mlp_in → mlp_out"
            )
        per_layer = dictionaries.coders or None
        return cls(per_layer, dictionaries.clt, dictionaries.name, dictionaries.sources)

    @property
    def d_model(self) -> int:
        return self.set.d_model

    @property
    def n_latents(self) -> int:
        """Latents per layer."""
        if self.clt is not None:
            return self.clt.W_enc.shape[1]
        return next(iter(self.per_layer.values())).W_enc.shape[0]

    def check_model(self, lm: LoadedModel) -> None:
        """One clear line, naming the file, when these transcoders cannot belong to `lm`."""
        self.set.check_model(lm.name, lm.n_layers, lm.d_model)

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> Transcoders:
        for module in [self.clt] if self.clt is not None else self.per_layer.values():
            module.to(device=device, dtype=dtype).eval()
        return self

    def encode(self, layer: int, mlp_in: torch.Tensor) -> torch.Tensor:
        """Dense latents [positions, n_latents] of the transcoder reading `mlp_in.layer`."""
        if self.clt is not None:
            return self.clt.encode_layer(layer, mlp_in)
        return self.per_layer[layer].encode(mlp_in)

    def encoder(self, layer: int, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(encoder rows [k, d], encoder biases [k]) of latents `indices` reading `mlp_in.layer`."""
        if self.clt is not None:
            return self.clt.W_enc[layer][indices], self.clt.b_enc[layer][indices]
        coder = self.per_layer[layer]
        return coder.W_enc[indices], coder.b_enc[indices]

    def writes(self, layer: int, indices: torch.Tensor) -> dict[int, torch.Tensor]:
        """Decoder rows of latents `indices` of source `layer`, per target layer they write to: {t: [k, d]}."""
        if self.clt is not None:
            decoder = self.clt.W_dec[layer][indices]
            return {layer + offset: decoder[:, offset] for offset in range(decoder.shape[1])}
        return {layer: self.per_layer[layer].W_dec[indices]}

    def skip(self, layer: int) -> torch.Tensor | None:
        """W_skip [d_out, d_in] of the transcoder predicting `mlp_out.layer`, if it has one."""
        return self.per_layer[layer].W_skip if self.per_layer is not None and layer in self.per_layer else None

    def reconstruct(self, layer: int, mlp_in: torch.Tensor, latents: dict[int, torch.Tensor]) -> torch.Tensor:
        """The transcoders' `mlp_out.layer` [positions, d] from `latents` {source layer: dense latents}."""
        if self.clt is not None:
            return self.clt.decode_layer(layer, [latents[source] for source in range(layer + 1)])
        return self.per_layer[layer].decode(latents[layer], mlp_in)


def load_transcoders(directory: Path) -> Transcoders:
    """Transcoders from a folder in any format the registry reads (circuit-tracer, GemmaScope, ours...)."""
    return Transcoders.from_set(read_dictionaries(Path(directory)))


def stored_transcoders(store: Store, name: str) -> Transcoders:
    """The dictionary set `name` of the store as transcoders: its CLT, or its per-layer transcoders."""
    return Transcoders.from_set(stored_set(store, name))

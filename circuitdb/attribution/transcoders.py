"""Per-layer transcoders or one cross-layer transcoder, seen the same way by the replacement model.

The replacement model needs five things of its transcoders, whatever their kind: which layers they
cover, the latents on a layer's `mlp_in`, a layer's reconstruction of `mlp_out`, what one latent
writes into each later layer, and the linear skip (if any). Layers without a transcoder keep their
whole MLP output as an error node.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import torch

from circuitdb.dictionaries.cross_layer_transcoder import CrossLayerTranscoder
from circuitdb.dictionaries.formats import import_circuit_tracer, import_circuit_tracer_clt, load_dictionary
from circuitdb.dictionaries.sparse_coder import SparseCoder
from circuitdb.errors import CircuitDBError
from circuitdb.models import LoadedModel
from circuitdb.store import Store, read_table


class Transcoders:
    def __init__(
        self, per_layer: dict[int, SparseCoder] | None = None, clt: CrossLayerTranscoder | None = None, name: str = ""
    ) -> None:
        if (per_layer is None) == (clt is None):
            raise CircuitDBError("give either per-layer transcoders or one cross-layer transcoder")
        self.per_layer, self.clt, self.name = per_layer, clt, name
        if per_layer is not None:
            for layer, coder in per_layer.items():
                if coder.cfg.kind == "sae":
                    raise CircuitDBError(f"layer {layer}: attribution needs transcoders (mlp_in → mlp_out), not SAEs")
            self.layers = sorted(per_layer)
            if not self.layers:
                raise CircuitDBError("no transcoders given: a transcoder set needs at least one layer")
        else:
            self.layers = list(range(clt.n_layers))

    @property
    def d_model(self) -> int:
        return self.clt.d_in if self.clt is not None else next(iter(self.per_layer.values())).d_in

    def check_model(self, lm: LoadedModel) -> None:
        """One clear line when these transcoders cannot belong to `lm`."""
        if self.d_model != lm.d_model:
            raise CircuitDBError(f"transcoders have width {self.d_model}; {lm.name} has d_model {lm.d_model}")
        if self.layers and self.layers[-1] >= lm.n_layers:
            raise CircuitDBError(f"transcoders cover layer {self.layers[-1]}; {lm.name} has {lm.n_layers} layers")
        if self.clt is not None and self.clt.n_layers != lm.n_layers:
            raise CircuitDBError(
                f"cross-layer transcoder spans {self.clt.n_layers} layers; the model has {lm.n_layers}"
            )

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
    """Transcoders from a folder in circuit-tracer's on-disk format (per-layer set or CLT) or ours."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CircuitDBError(f"transcoder folder {directory} does not exist")
    if (directory / "config.json").exists():
        coder, meta = load_dictionary(directory)
        if isinstance(coder, CrossLayerTranscoder):
            return Transcoders(clt=coder, name=directory.name)
        return Transcoders({int(meta["layer"]): coder}, name=directory.name)
    if any(directory.glob("W_enc_*.safetensors")):
        return Transcoders(clt=import_circuit_tracer_clt(directory), name=directory.name)
    return Transcoders(import_circuit_tracer(directory), name=directory.name)


def stored_transcoders(store: Store, name: str) -> Transcoders:
    """The dictionary set `name` of the store as transcoders: its CLT, or its per-layer transcoders."""
    rows = read_table(store, "dictionaries").filter(pl.col("name") == name)
    if rows.is_empty():
        raise CircuitDBError(f"no dictionaries named {name!r} in the store; build them first (`circuitdb build`)")
    clt_rows = rows.filter(pl.col("kind") == "clt")
    if not clt_rows.is_empty():
        coder, _ = load_dictionary(store.root / clt_rows["path"][0])
        return Transcoders(clt=coder, name=name)
    per_layer = {}
    for layer, path, input_hook, target_hook in rows.select("layer", "path", "input_hook", "target_hook").iter_rows():
        if (input_hook, target_hook) != (f"mlp_in.{layer}", f"mlp_out.{layer}"):
            raise CircuitDBError(
                f"dictionary {name}/{layer} maps {input_hook} → {target_hook}; attribution needs transcoders"
            )
        per_layer[layer], _ = load_dictionary(store.root / path)
    return Transcoders(per_layer, name=name)

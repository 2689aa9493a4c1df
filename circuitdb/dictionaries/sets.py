"""A set of dictionaries as one thing: per-layer coders by layer, or one cross-layer transcoder.

Every format reader returns one, the store's sets load as one, and attribution, statistics and
import take one; so nothing downstream asks which file format or which kind of set it came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from circuitdb.dictionaries.cross_layer_transcoder import CrossLayerTranscoder
from circuitdb.dictionaries.sparse_coder import SparseCoder
from circuitdb.errors import CircuitDBError


@dataclass
class DictionarySet:
    name: str
    """How tables and graphs call the set (by default the folder's name)."""
    format: str
    """The format it was read from."""
    coders: dict[int, SparseCoder] = field(default_factory=dict)
    """Per-layer SAEs or transcoders by the layer they read; empty when `clt` is set."""
    clt: CrossLayerTranscoder | None = None
    """One cross-layer transcoder over layers 0..n_layers-1."""
    input_kind: str = "mlp_in"
    """Hook kind every latent reads (`mlp_in`, `resid_post`, ...)."""
    output_kind: str = "mlp_out"
    """Hook kind the dictionaries reconstruct."""
    sources: dict[int, str] = field(default_factory=dict)
    """The file or folder each layer was read from, so that errors can name it."""
    model: str | None = None
    """The model the files say they were trained on, when they say."""

    def __post_init__(self) -> None:
        if (self.clt is None) == (not self.coders):
            raise CircuitDBError(f"{self.name}: a dictionary set holds per-layer dictionaries or one CLT")

    @property
    def kind(self) -> Literal["sae", "plt", "clt"]:
        return self._member.kind

    @property
    def reconstructs_input(self) -> bool:
        """Whether its dictionaries reconstruct what they read (SAEs), rather than stand in for MLPs."""
        return self._member.reconstructs_input

    @property
    def _member(self) -> SparseCoder | CrossLayerTranscoder:
        return self.clt if self.clt is not None else next(iter(self.coders.values()))

    @property
    def layers(self) -> list[int]:
        return list(range(self.clt.n_layers)) if self.clt is not None else sorted(self.coders)

    @property
    def d_model(self) -> int:
        return self.clt.d_in if self.clt is not None else next(iter(self.coders.values())).d_in

    def source(self, layer: int) -> str:
        return self.sources.get(layer, f"{self.name} layer {layer}")

    def check_model(self, model_name: str, n_layers: int, d_model: int) -> None:
        """One clear line naming the file when this set cannot belong to a model of these sizes."""
        if self.clt is not None and self.clt.n_layers != n_layers:
            raise CircuitDBError(
                f"{self.source(0)}: the cross-layer transcoder spans {self.clt.n_layers} layers; "
                f"{model_name} has {n_layers}"
            )
        for layer in self.layers:
            if layer >= n_layers:
                raise CircuitDBError(
                    f"{self.source(layer)}: dictionary for layer {layer}, but {model_name} has {n_layers} layers"
                )
            coder = self.clt if self.clt is not None else self.coders[layer]
            if coder.d_in != d_model or coder.d_out != d_model:
                raise CircuitDBError(
                    f"{self.source(layer)}: width {coder.d_in} → {coder.d_out} does not fit {model_name} "
                    f"(d_model {d_model})"
                )

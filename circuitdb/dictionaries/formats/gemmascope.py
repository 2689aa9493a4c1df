"""GemmaScope: one `params.npz` per dictionary with W_enc [d, n], W_dec [n, d], b_enc [n], b_dec [d]
and threshold [n] (JumpReLU). The encoder reads its input as is (no b_dec subtracted):
f = JumpReLU_θ(x · W_enc + b_enc), x̂ = f · W_dec + b_dec.

Published as `layer_<i>/width_<w>/average_l0_<k>/params.npz`, so the layer comes from the path. The
files do not say whether they are SAEs or transcoders, nor which hook an SAE reads: the repository's
name does (`gemma-scope-2b-pt-transcoders`, `-res`, `-mlp`, `-att`), and where the folder's path
does not carry it, the reader asks for it (`--kind`, `--hook`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from circuitdb.config import DictionaryConfig
from circuitdb.dictionaries.formats._files import layer_in_name, load_tensors, make_coder, require, write_folder
from circuitdb.dictionaries.sets import DictionarySet
from circuitdb.errors import CircuitDBError

NAME = "gemmascope"
_SAE_HOOKS = {"-res": "resid_post", "-mlp": "mlp_out", "-att": "attn_out"}


def recognizes(folder: Path) -> bool:
    return not (folder / "config.yaml").exists() and any(folder.glob("**/params.npz"))


def _kind_and_hook(folder: Path, hint) -> tuple[str, str, str]:
    """(kind, input hook kind, output hook kind) from the hint, or else from the folder's path."""
    path = str(folder.resolve()).lower()
    kind = hint.kind or ("plt" if "transcoder" in path else None)
    if kind == "plt":
        return "plt", "mlp_in", "mlp_out"
    hook = hint.hook or next((h for marker, h in _SAE_HOOKS.items() if marker in path), None)
    if kind is None and hook is None:
        raise CircuitDBError(
            f"{folder}: GemmaScope files do not say what they are; pass --kind plt for transcoders, "
            "or --kind sae --hook resid_post|mlp_out|attn_out"
        )
    if hook is None:
        raise CircuitDBError(f"{folder}: which hook do these SAEs read? pass --hook (e.g. resid_post)")
    return "sae", hook, hook


def read(folder: Path, hint) -> DictionarySet:
    kind, input_kind, output_kind = _kind_and_hook(folder, hint)
    coders, sources = {}, {}
    for path in sorted(folder.glob("**/params.npz")):
        layer = layer_in_name(str(path.resolve()))
        if layer is None:
            raise CircuitDBError(f"{path}: no layer in its path (GemmaScope keeps layer_<i>/.../params.npz)")
        if layer in coders:
            raise CircuitDBError(f"{path}: a second dictionary for layer {layer} (the first is {sources[layer]})")
        tensors = load_tensors(path)
        require(tensors, ("W_enc", "W_dec", "b_enc", "b_dec", "threshold"), path)
        n = tensors["b_enc"].shape[0]
        cfg = DictionaryConfig(kind=kind, activation="jumprelu", n_latents=n, k=1)
        coders[layer] = make_coder(cfg, tensors, path, threshold=tensors["threshold"], centres_input=False)
        sources[layer] = str(path)
    return DictionarySet(hint.name or folder.name, NAME, coders, None, input_kind, output_kind, sources)


def write(dictionaries: DictionarySet, directory: Path) -> None:
    """`layer_<i>/params.npz` per layer; TopK has no JumpReLU equivalent and is refused."""
    if dictionaries.clt is not None:
        raise CircuitDBError("GemmaScope files hold per-layer dictionaries, not a cross-layer transcoder")

    def write_all(folder: Path) -> None:
        for layer, coder in dictionaries.coders.items():
            if coder.activation.family == "topk":
                raise CircuitDBError(f"layer {layer}: a TopK dictionary has no GemmaScope (JumpReLU) form")
            threshold = coder.activation.export_threshold()
            b_enc = coder.b_enc.detach()
            if coder.centres_input:  # GemmaScope does not centre the input: b_enc absorbs it
                b_enc = b_enc - coder.W_enc.detach() @ coder.b_dec.detach()
            arrays = {
                "W_enc": coder.W_enc.detach().T,
                "W_dec": coder.W_dec.detach(),
                "b_enc": b_enc,
                "b_dec": coder.b_dec.detach(),
                "threshold": threshold if threshold is not None else b_enc.new_zeros(coder.cfg.n_latents),
            }
            (folder / f"layer_{layer}").mkdir()
            np.savez(folder / f"layer_{layer}" / "params.npz", **{k: v.cpu().numpy() for k, v in arrays.items()})

    write_folder(directory, write_all)

"""sparsify (EleutherAI): one folder per hook point, named by the module it hooks (`layers.12` for the
residual stream after block 12, `layers.12.mlp`, `layers.12.self_attn`), each with `cfg.json`
(SparseCoderConfig fields + d_in) and `sae.safetensors` (encoder.weight [n, d], encoder.bias [n],
W_dec [n, d], b_dec [d], W_skip [d, d] with a skip connection).

f = TopK(ReLU(encoder(x − b_dec))) for SAEs, without the − b_dec for transcoders (`transcode: true`);
x̂ = f · W_dec + b_dec (+ x · W_skipᵀ). A transcoder on `layers.N.mlp` reads the MLP's input and
predicts its output: our mlp_in.N → mlp_out.N.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from safetensors.torch import save_file

from circuitdb.config import DictionaryConfig
from circuitdb.dictionaries.formats._files import (
    load_tensors,
    make_coder,
    member_folders,
    read_json,
    require,
    write_folder,
)
from circuitdb.dictionaries.sets import DictionarySet
from circuitdb.errors import CircuitDBError

NAME = "sparsify"
_HOOK_FOLDER = re.compile(r"^(?:.*\.)?(?:layers|h)\.(\d+)(?:\.(mlp|self_attn|attn))?$")
_SAE_KINDS = {None: "resid_post", "mlp": "mlp_out", "self_attn": "attn_out", "attn": "attn_out"}


def _is_hook_folder(folder: Path) -> bool:
    return (folder / "cfg.json").is_file() and (folder / "sae.safetensors").is_file()


def recognizes(folder: Path) -> bool:
    return bool(member_folders(folder, _is_hook_folder))


def read(folder: Path, hint) -> DictionarySet:
    coders, sources, kinds = {}, {}, set()
    for hook_folder in member_folders(folder, _is_hook_folder):
        match = _HOOK_FOLDER.match(hook_folder.name)
        if match is None:
            raise CircuitDBError(f"{hook_folder}: sparsify folders are named by hook point, e.g. layers.12.mlp")
        layer, module = int(match.group(1)), match.group(2)
        config = read_json(hook_folder / "cfg.json")
        if config.get("activation", "topk") != "topk":
            raise CircuitDBError(f"{hook_folder}/cfg.json: activation {config['activation']!r} is not supported (topk)")
        transcoder = bool(config.get("transcode"))
        if transcoder and module != "mlp":
            raise CircuitDBError(f"{hook_folder}: a transcoder here maps an MLP's input to its output (layers.N.mlp)")
        kinds.add(("mlp_in", "mlp_out") if transcoder else (_SAE_KINDS[module],) * 2)
        path = hook_folder / "sae.safetensors"
        tensors = load_tensors(path)
        require(tensors, ("encoder.weight", "encoder.bias", "W_dec", "b_dec"), path)
        n = tensors["encoder.bias"].shape[0]
        skip = "W_skip" in tensors
        k = int(config.get("k", 32))
        cfg = DictionaryConfig(kind="plt" if transcoder else "sae", activation="topk", n_latents=n, k=k, skip=skip)
        if layer in coders:
            raise CircuitDBError(
                f"{hook_folder}: a second dictionary for layer {layer} (the first is {sources[layer]})"
            )
        ours = {"W_enc": tensors["encoder.weight"], "b_enc": tensors["encoder.bias"]}
        ours |= {k: v for k, v in tensors.items() if k in ("W_dec", "b_dec", "W_skip")}
        coders[layer] = make_coder(cfg, ours, path, centres_input=not transcoder)
        sources[layer] = str(hook_folder)
    if len(kinds) > 1:
        raise CircuitDBError(f"{folder}: dictionaries of different hook points ({sorted(kinds)}); import one kind")
    input_kind, output_kind = kinds.pop()
    return DictionarySet(hint.name or folder.name, NAME, coders, None, input_kind, output_kind, sources)


def write(dictionaries: DictionarySet, directory: Path) -> None:
    """TopK SAEs or transcoders as a sparsify run folder, one `layers.<i>[.mlp]` folder each."""
    suffix = {"resid_post": "", "mlp_out": ".mlp", "attn_out": ".self_attn", "mlp_in": ".mlp"}.get(
        dictionaries.input_kind
    )
    if suffix is None or dictionaries.clt is not None:
        raise CircuitDBError(f"sparsify has no place for a {dictionaries.kind} reading {dictionaries.input_kind}")
    coders = dictionaries.coders
    for layer, coder in coders.items():
        if coder.activation.k is None:
            raise CircuitDBError(f"layer {layer}: sparsify holds TopK dictionaries; this one is {coder.cfg.activation}")

    def write(folder: Path) -> None:
        for layer, coder in coders.items():
            transcoder = not coder.reconstructs_input
            config = {
                "activation": "topk",
                "expansion_factor": coder.cfg.n_latents // coder.d_in,
                "normalize_decoder": True,
                "num_latents": coder.cfg.n_latents,
                "k": coder.activation.k,
                "multi_topk": False,
                "skip_connection": coder.W_skip is not None,
                "transcode": transcoder,
                "d_in": coder.d_in,
            }
            tensors = {
                "encoder.weight": coder.W_enc,
                "encoder.bias": coder.b_enc,
                "W_dec": coder.W_dec,
                "b_dec": coder.b_dec,
            }
            if coder.W_skip is not None:
                tensors["W_skip"] = coder.W_skip
            hook_folder = folder / f"layers.{layer}{suffix}"
            hook_folder.mkdir()
            save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, hook_folder / "sae.safetensors")
            (hook_folder / "cfg.json").write_text(json.dumps(config))

    write_folder(directory, write)

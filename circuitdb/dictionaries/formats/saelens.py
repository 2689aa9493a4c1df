"""SAELens: `cfg.json` + `sae_weights.safetensors` per SAE (a folder holds one, or one subfolder each),
W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc, b_dec, and `threshold` [d_sae] for JumpReLU
(SAELens 5 and 6: the hook name sits at the top of cfg.json or in its `metadata`).

Architectures: standard (ReLU), topk (k in `k` or `activation_fn_kwargs`), jumprelu. The input is
centred by b_dec when `apply_b_dec_to_input` (our SAEs always are; otherwise b_enc absorbs it). The
hook comes from `hook_name` in TransformerLens' naming (`blocks.12.hook_resid_post`).
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
from circuitdb.dictionaries.sparse_coder import SparseAutoencoder, SparseCoder
from circuitdb.errors import CircuitDBError
from circuitdb.models import HookPoint

NAME = "saelens"
TRANSFORMERLENS_HOOKS = {
    "resid_pre": "hook_resid_pre",
    "attn_out": "hook_attn_out",
    "mlp_in": "ln2.hook_normalized",
    "mlp_out": "hook_mlp_out",
    "resid_post": "hook_resid_post",
}
"""Our hook kinds by the TransformerLens name of the same point."""
ARCHITECTURES = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu"}
FAMILY_ARCHITECTURES = {"relu": "standard", "topk": "topk", "jumprelu": "jumprelu"}
_HOOK_NAME = re.compile(r"^blocks\.(\d+)\.(.+)$")


def _is_sae(folder: Path) -> bool:
    return (folder / "cfg.json").is_file() and (folder / "sae_weights.safetensors").is_file()


def recognizes(folder: Path) -> bool:
    return bool(member_folders(folder, _is_sae))


def _hook(config: dict, folder: Path) -> HookPoint:
    """From `hook_name` (SAELens 5) or `metadata.hook_name` (SAELens 6)."""
    hook_name = config.get("hook_name") or (config.get("metadata") or {}).get("hook_name")
    match = _HOOK_NAME.match(str(hook_name or ""))
    kinds = {name: kind for kind, name in TRANSFORMERLENS_HOOKS.items()}
    if match is None or match.group(2) not in kinds:
        raise CircuitDBError(
            f"{folder}/cfg.json: hook_name {hook_name!r} is not one of blocks.<layer>.{{{','.join(kinds)}}}"
        )
    return HookPoint.make(kinds[match.group(2)], int(match.group(1)))


def _read_one(folder: Path) -> tuple[HookPoint, SparseCoder]:
    config = read_json(folder / "cfg.json")
    path = folder / "sae_weights.safetensors"
    tensors = load_tensors(path)
    require(tensors, ("W_enc", "W_dec", "b_enc", "b_dec"), path)
    if tensors["W_enc"].shape != (config.get("d_in"), config.get("d_sae")):
        raise CircuitDBError(f"{folder}: W_enc is not [d_in, d_sae] as cfg.json says")
    architecture = config.get("architecture", "standard")
    activation = ARCHITECTURES.get(architecture)
    if activation is None:
        raise CircuitDBError(f"{folder}: unsupported SAELens architecture {architecture!r}")
    if config.get("normalize_activations", "none") not in ("none", None):
        raise CircuitDBError(f"{folder}: SAELens activation normalization is not supported; fold it first")
    if config.get("rescale_acts_by_decoder_norm"):
        raise CircuitDBError(f"{folder}: TopK over decoder-norm-scaled activations is not supported; fold it first")
    if activation == "jumprelu":
        require(tensors, ("threshold",), path)
    k = config.get("k") or (config.get("activation_fn_kwargs") or {}).get("k") or 1
    cfg = DictionaryConfig(kind="sae", activation=activation, n_latents=config["d_sae"], k=int(k))
    threshold = tensors.get("threshold") if activation == "jumprelu" else None
    centres = bool(config.get("apply_b_dec_to_input", True))
    coder = make_coder(cfg, tensors, path, threshold=threshold, centres_input=centres)
    return _hook(config, folder), coder


def read(folder: Path, hint) -> DictionarySet:
    coders, sources, kinds = {}, {}, set()
    for member in member_folders(folder, _is_sae):
        hook, coder = _read_one(member)
        if hook.layer in coders:
            raise CircuitDBError(f"{member}: a second SAE for layer {hook.layer} (the first is {sources[hook.layer]})")
        coders[hook.layer], sources[hook.layer] = coder, str(member)
        kinds.add(hook.kind)
    if len(kinds) > 1:
        raise CircuitDBError(f"{folder}: SAEs of different hook kinds ({', '.join(sorted(kinds))}); import one kind")
    kind = kinds.pop()
    return DictionarySet(hint.name or folder.name, NAME, coders, None, kind, kind, sources)


def write(dictionaries: DictionarySet, directory: Path) -> None:
    """SAEs as SAELens folders: the folder itself for one, a `blocks.<l>.<hook>` subfolder each for several."""
    if dictionaries.kind != SparseAutoencoder.kind:
        raise CircuitDBError("SAELens format holds SAEs (kind: sae); export transcoders to circuit-tracer")
    hook_name = TRANSFORMERLENS_HOOKS[dictionaries.input_kind]

    def write_all(folder: Path) -> None:
        for layer, coder in dictionaries.coders.items():
            hook = HookPoint.make(dictionaries.input_kind, layer)
            target = folder if len(dictionaries.coders) == 1 else folder / f"blocks.{layer}.{hook_name}"
            target.mkdir(exist_ok=True)
            _write_one(coder, target, hook, dictionaries.model or "")

    write_folder(directory, write_all)


def _write_one(coder: SparseCoder, folder: Path, point: HookPoint, model_name: str) -> None:
    architecture = FAMILY_ARCHITECTURES[coder.activation.family]
    config = {
        "architecture": architecture,
        "d_in": coder.d_in,
        "d_sae": coder.cfg.n_latents,
        "dtype": "float32",
        "device": "cpu",
        "model_name": model_name,
        "hook_name": f"blocks.{point.layer}.{TRANSFORMERLENS_HOOKS[point.kind]}",
        "hook_layer": point.layer,
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "prepend_bos": True,
        "metadata": {"circuitdb_hook": point.name},
    }
    if coder.activation.k is not None:
        config |= {"k": coder.activation.k, "activation_fn_kwargs": {"k": coder.activation.k}}
    tensors = {
        "W_enc": coder.W_enc.detach().T.contiguous(),
        "W_dec": coder.W_dec.detach().contiguous(),
        "b_enc": coder.b_enc.detach().contiguous(),
        "b_dec": coder.b_dec.detach().contiguous(),
    }
    threshold = coder.activation.export_threshold()
    if threshold is not None:
        tensors["threshold"] = threshold.contiguous()
    save_file(tensors, folder / "sae_weights.safetensors")
    (folder / "cfg.json").write_text(json.dumps(config, indent=1))

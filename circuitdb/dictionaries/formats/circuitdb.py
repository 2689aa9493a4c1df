"""Our format: `<dir>/config.json` (format tag, DictionaryConfig, shapes, hooks, model, metrics) +
`weights.safetensors` (the module's state dict). A set is a folder of such folders (`layer_3/`, or
`clt/`), which is how the store keeps `dictionaries/<name>/`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from safetensors.torch import save_file

from circuitdb.config import DictionaryConfig
from circuitdb.dictionaries.cross_layer_transcoder import CrossLayerTranscoder
from circuitdb.dictionaries.formats._files import load_tensors, member_folders, read_json, write_folder
from circuitdb.dictionaries.sets import DictionarySet
from circuitdb.dictionaries.sparse_coder import SparseCoder
from circuitdb.errors import CircuitDBError
from circuitdb.models import HookPoint
from circuitdb.store.integrity import write_checksum

NAME = "circuitdb"
FORMAT = "circuitdb-dictionary"
_RENAMED = {"jumprelu.": "activation.", "batch_topk.": "activation.", "jumprelus.": "activations."}
"""State-dict prefixes of files written before activations became modules."""


def save_dictionary(coder: SparseCoder | CrossLayerTranscoder, directory: Path, meta: dict) -> None:
    """Save to our format; `meta` (model, hooks, layer, metrics...) goes into config.json."""
    shapes = {"d_in": coder.d_in, "d_out": coder.d_out, "n_layers": getattr(coder, "n_layers", 1)}
    config = meta | {"format": FORMAT, "version": 1, "dictionary": dataclasses.asdict(coder.cfg), **shapes}

    def write(folder: Path) -> None:
        tensors = {k: v.detach().contiguous().cpu() for k, v in coder.state_dict().items()}
        save_file(tensors, folder / "weights.safetensors")
        (folder / "config.json").write_text(json.dumps(config, indent=1, default=str))
        for written in ("weights.safetensors", "config.json"):
            write_checksum(folder / written)

    write_folder(directory, write)


def _renamed(key: str) -> str:
    for old, new in _RENAMED.items():
        if key.startswith(old):
            return new + key[len(old) :]
    return key


def load_dictionary(directory: Path) -> tuple[SparseCoder | CrossLayerTranscoder, dict]:
    directory = Path(directory)
    config = read_json(directory / "config.json")
    if config.get("format") != FORMAT:
        raise CircuitDBError(f"{directory} is not a circuitdb dictionary (config.json has no format {FORMAT!r})")
    cfg = DictionaryConfig(**config["dictionary"])
    if cfg.kind == "clt":
        coder = CrossLayerTranscoder(cfg, config["n_layers"], config["d_in"])
    else:
        coder = SparseCoder(cfg, config["d_in"], config["d_out"])
    state = {_renamed(k): v for k, v in load_tensors(directory / "weights.safetensors").items()}
    try:
        coder.load_state_dict(state)
    except RuntimeError as exc:
        raise CircuitDBError(f"{directory}: weights do not match config.json ({str(exc).splitlines()[0]})") from None
    return coder.eval(), config


def _is_ours(folder: Path) -> bool:
    try:
        return (folder / "config.json").is_file() and json.loads((folder / "config.json").read_text()).get(
            "format"
        ) == FORMAT
    except (OSError, json.JSONDecodeError, AttributeError):
        return False


def recognizes(folder: Path) -> bool:
    return bool(member_folders(folder, _is_ours))


def read(folder: Path, hint) -> DictionarySet:
    """One dictionary folder, or a folder of them (one per layer, or a CLT)."""
    coders, sources, clt, config = {}, {}, None, {}
    for member in member_folders(folder, _is_ours):
        coder, config = load_dictionary(member)
        if isinstance(coder, CrossLayerTranscoder):
            clt = coder
            sources[0] = str(member)
            continue
        layer = int(config["layer"])
        if layer in coders:
            raise CircuitDBError(f"{member}: a second dictionary for layer {layer} (the first is {sources[layer]})")
        coders[layer], sources[layer] = coder, str(member)
    if clt is not None and coders:
        raise CircuitDBError(f"{folder}: holds both a cross-layer transcoder and per-layer dictionaries")
    input_hook = config.get("input_hook") or "mlp_in.0"
    target_hook = config.get("target_hook") or "mlp_out.0"
    return DictionarySet(
        name=hint.name or folder.name,
        format=NAME,
        coders=coders,
        clt=clt,
        input_kind=HookPoint.parse(input_hook).kind,
        output_kind=HookPoint.parse(target_hook).kind,
        sources=sources,
        model=config.get("model"),
    )


def write(dictionaries: DictionarySet, directory: Path) -> None:
    """One of our dictionary folders per layer (`layer_<i>/`), or `clt/`."""
    members = {"clt": dictionaries.clt} if dictionaries.clt is not None else dictionaries.coders

    def write_all(folder: Path) -> None:
        for member, coder in members.items():
            meta = {"model": dictionaries.model}
            if member == "clt":
                meta["layers"] = dictionaries.layers
            else:
                hooks = {
                    "input_hook": f"{dictionaries.input_kind}.{member}",
                    "target_hook": f"{dictionaries.output_kind}.{member}",
                }
                meta |= {"layer": member, **hooks}
            save_dictionary(coder, folder / ("clt" if member == "clt" else f"layer_{member}"), meta)

    write_folder(directory, write_all)

"""circuit-tracer's files: per-layer transcoder sets and cross-layer transcoders (CLTs).

Transcoder set: `config.yaml` (model_kind: transcoder_set, feature_input_hook, feature_output_hook,
optional activation/k, optional `transcoders:` list) + one file per layer: `layer_{i}.safetensors`
(W_enc/W_dec [n, d], b_enc, b_dec, optional W_skip and `activation_function.threshold`) or a
GemmaScope `params.npz`. The layer of a file is the number its path names (`layer_12`, as
circuit-tracer numbers them); an entry without one takes its position in the list, and a list
entry `{layer: N, filepath: ...}` says it outright. Published configs list `hf://owner/repo/path`
URIs: each maps to the same path (or file name) inside the folder the user downloaded; nothing is
fetched.

CLT: `W_enc_{i}.safetensors` (W_enc_i [n, d], b_enc_i, b_dec_i, optional threshold_i) and
`W_dec_{i}.safetensors` (W_dec_i [n, L − i, d]) per source layer i.
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file

from circuitdb.config import DictionaryConfig
from circuitdb.dictionaries.cross_layer_transcoder import CrossLayerTranscoder
from circuitdb.dictionaries.formats._files import (
    layer_in_name,
    load_tensors,
    make_coder,
    read_yaml,
    require,
    write_folder,
)
from circuitdb.dictionaries.sets import DictionarySet
from circuitdb.dictionaries.sparse_coder import SparseCoder, Transcoder
from circuitdb.errors import CircuitDBError

NAME = "circuit-tracer"
FAMILY_NAMES = {"topk": "topk", "relu": "relu", "jumprelu": "jump_relu"}
"""Our activation families by the name circuit-tracer's config gives them."""
INPUT_HOOKS = {"mlp.hook_in": "mlp_in", "ln2.hook_normalized": "mlp_in", "hook_mlp_in": "mlp_in"}
OUTPUT_HOOKS = {"hook_mlp_out": "mlp_out", "mlp.hook_out": "mlp_out"}
"""TransformerLens hook names (without `blocks.<l>.`) → our hook kinds. For every architecture these
are the MLP's normed input and what the MLP block adds to the residual (Gemma: after its post-norm)."""
THRESHOLD_KEYS = ("activation_function.threshold", "threshold")


def recognizes(folder: Path) -> bool:
    if any(folder.glob("W_enc_*.safetensors")):
        return True
    if (folder / "config.yaml").is_file():
        return read_yaml(folder / "config.yaml").get("model_kind") in ("transcoder_set", "cross_layer_transcoder", None)
    return any(folder.glob("layer_*.safetensors"))


def read(folder: Path, hint) -> DictionarySet:
    config = read_yaml(folder / "config.yaml") if (folder / "config.yaml").is_file() else {}
    name = hint.name or folder.name
    input_kind = _hook_kind(config, "feature_input_hook", INPUT_HOOKS, folder)
    output_kind = _hook_kind(config, "feature_output_hook", OUTPUT_HOOKS, folder)
    if config.get("model_kind") == "cross_layer_transcoder" or any(folder.glob("W_enc_*.safetensors")):
        clt = read_clt(folder)
        return DictionarySet(name, NAME, clt=clt, sources={0: str(folder)}, model=config.get("model_name"))
    if config and config.get("model_kind", "transcoder_set") != "transcoder_set":
        raise CircuitDBError(f"{folder}/config.yaml: model_kind must be transcoder_set or cross_layer_transcoder")
    files = _layer_files(folder, config)
    coders = {layer: _read_layer(path, config) for layer, path in files.items()}
    widths = {layer: coder.cfg.n_latents for layer, coder in coders.items()}
    first = min(widths)
    for layer, width in widths.items():
        if width != widths[first] or coders[layer].d_in != coders[first].d_in:
            raise CircuitDBError(
                f"{files[layer]}: {width} latents × {coders[layer].d_in} wide, but {files[first]} has "
                f"{widths[first]} × {coders[first].d_in}: a set has one shape"
            )
    sources = {layer: str(path) for layer, path in files.items()}
    return DictionarySet(name, NAME, coders, None, input_kind, output_kind, sources, config.get("model_name"))


def _hook_kind(config: dict, key: str, known: dict[str, str], folder: Path) -> str:
    value = config.get(key)
    if value is None:
        return next(iter(known.values()))
    short = value.split(".", 2)[2] if value.startswith("blocks.") else value
    if short not in known:
        raise CircuitDBError(
            f"{folder}/config.yaml: {key} {value!r} is not supported; transcoders here read the MLP's normed input "
            f"({', '.join(INPUT_HOOKS)}) and write its output ({', '.join(OUTPUT_HOOKS)})"
        )
    return known[short]


def _local_file(folder: Path, entry: str) -> tuple[Path, str]:
    """(the file on disk, the path whose name carries the layer) for a `transcoders:` entry."""
    if entry.startswith("hf://"):
        parts = entry.removeprefix("hf://").split("/", 2)
        if len(parts) < 3:
            raise CircuitDBError(f"{folder}/config.yaml: {entry!r} is not hf://owner/repo/path")
        repo, inner = parts[1].split("@")[0], parts[2]
        for candidate in (folder / inner, folder / repo / inner, folder / Path(inner).name):
            if candidate.is_file():
                return candidate, inner
        raise CircuitDBError(
            f"{folder}/config.yaml lists {entry}, but neither {inner} nor {Path(inner).name} is in {folder} "
            "(nothing is downloaded here: put the published file there)"
        )
    path = Path(entry) if Path(entry).is_absolute() else folder / entry
    if not path.is_file():
        raise CircuitDBError(f"{folder}/config.yaml lists {entry}, which is not in {folder}")
    return path, entry


def _layer_files(folder: Path, config: dict) -> dict[int, Path]:
    """Each layer's file, numbered by the layer in its name (or its list position, or an explicit `layer:`)."""
    listed = config.get("transcoders")
    found: list[tuple[int, Path]] = []
    if listed:
        for position, entry in enumerate(listed):
            explicit = entry.get("layer") if isinstance(entry, dict) else None
            uri = entry.get("filepath") or entry.get("path") if isinstance(entry, dict) else entry
            if not isinstance(uri, str):
                raise CircuitDBError(f"{folder}/config.yaml: transcoders entry {position} names no file")
            path, named = _local_file(folder, uri)
            in_name = layer_in_name(named)
            found.append(
                (int(explicit) if explicit is not None else in_name if in_name is not None else position, path)
            )
    else:
        files = sorted(folder.glob("layer_*.safetensors")) or sorted(folder.glob("**/params.npz"))
        if not files:
            raise CircuitDBError(f"{folder}: no transcoder files (layer_<i>.safetensors) and no transcoders: list")
        for path in files:
            layer = layer_in_name(str(path.relative_to(folder)))
            if layer is None:
                raise CircuitDBError(f"{path}: no layer number in its name; list the files in config.yaml")
            found.append((layer, path))
    files: dict[int, Path] = {}
    for layer, path in found:
        if layer in files:
            raise CircuitDBError(f"{path}: a second transcoder for layer {layer} (the first is {files[layer]})")
        files[layer] = path
    missing = sorted(set(range(max(files) + 1)) - set(files))
    if missing:
        raise CircuitDBError(
            f"{folder}: no transcoder for layer {missing[0]} (the files cover {len(files)} layers up to "
            f"{max(files)}; circuit-tracer sets have one per layer from 0)"
        )
    return files


def _read_layer(path: Path, config: dict) -> SparseCoder:
    tensors = load_tensors(path)
    require(tensors, ("W_enc", "W_dec", "b_enc", "b_dec"), path)  # before the activation is worked out
    threshold = next((tensors[k] for k in THRESHOLD_KEYS if k in tensors), None)
    if threshold is None and "log_threshold" in tensors:
        threshold = tensors["log_threshold"].exp()
    declared = config.get("activation")
    if threshold is not None:
        activation = "jumprelu"
    elif declared in (None, "relu"):
        activation = "relu"
    elif declared == "topk":
        activation = "topk"
    else:
        raise CircuitDBError(f"{path}: activation {declared!r} needs thresholds in the file; it has none")
    n = tensors["b_enc"].shape[0]
    k = int(config.get("k") or 1)
    cfg = DictionaryConfig(kind="plt", activation=activation, n_latents=n, k=min(k, n), skip="W_skip" in tensors)
    return make_coder(cfg, tensors, path, threshold=threshold, centres_input=False)


def read_clt(folder: Path) -> CrossLayerTranscoder:
    """A CLT from W_enc_{i} / W_dec_{i} files, layers numbered by the files' names."""
    encoder_files = {layer_in_name(p.name): p for p in folder.glob("W_enc_*.safetensors")}
    if not encoder_files:
        raise CircuitDBError(f"{folder}: no W_enc_*.safetensors files of a circuit-tracer CLT")
    n_layers = max(encoder_files) + 1
    missing = sorted(set(range(n_layers)) - set(encoder_files))
    if missing:
        raise CircuitDBError(
            f"{folder}: W_enc_{missing[0]}.safetensors is missing (a CLT covers layers 0..{n_layers - 1})"
        )
    encoders, decoders = [], []
    for i in range(n_layers):
        encoder = load_tensors(encoder_files[i])
        require(encoder, (f"W_enc_{i}", f"b_enc_{i}", f"b_dec_{i}"), encoder_files[i])
        decoder_file = folder / f"W_dec_{i}.safetensors"
        if not decoder_file.is_file():
            raise CircuitDBError(f"{decoder_file} is missing (each W_enc_{i} needs its W_dec_{i})")
        decoder = load_tensors(decoder_file)
        require(decoder, (f"W_dec_{i}",), decoder_file)
        encoders.append(encoder)
        decoders.append(decoder[f"W_dec_{i}"])
    n_latents, d = encoders[0]["W_enc_0"].shape
    jump = "threshold_0" in encoders[0]
    cfg = DictionaryConfig(kind="clt", activation="jumprelu" if jump else "relu", n_latents=n_latents, k=1)
    clt = CrossLayerTranscoder(cfg, n_layers, d)
    state = {
        "W_enc": torch.stack([e[f"W_enc_{i}"] for i, e in enumerate(encoders)]),
        "b_enc": torch.stack([e[f"b_enc_{i}"] for i, e in enumerate(encoders)]),
        "b_dec": torch.stack([e[f"b_dec_{i}"] for i, e in enumerate(encoders)]),
        **{f"W_dec.{i}": decoder for i, decoder in enumerate(decoders)},
    }
    if jump:
        thresholds = [e[f"threshold_{i}"].reshape(-1) for i, e in enumerate(encoders)]
        state |= {f"activations.{i}.log_threshold": t.clamp_min(1e-12).log() for i, t in enumerate(thresholds)}
    try:
        clt.load_state_dict(state)
    except RuntimeError as exc:
        raise CircuitDBError(f"{folder}: CLT tensors have inconsistent shapes ({str(exc).splitlines()[0]})") from None
    return clt.eval()


def write(dictionaries: DictionarySet, directory: Path) -> None:
    """A per-layer transcoder set or a CLT, as circuit-tracer reads them."""
    if (dictionaries.input_kind, dictionaries.output_kind) != ("mlp_in", "mlp_out"):
        raise CircuitDBError("circuit-tracer holds transcoders (mlp_in → mlp_out); export SAEs to saelens or sparsify")
    model = dictionaries.model or ""
    if dictionaries.clt is not None:
        export_clt(dictionaries.clt, directory, model)
    else:
        export_transcoders(dictionaries.coders, directory, model)


def export_transcoders(coders: dict[int, SparseCoder], directory: Path, model_name: str) -> None:
    """Write per-layer transcoders as a circuit-tracer transcoder set (layers must be 0..L-1)."""
    if sorted(coders) != list(range(len(coders))):
        raise CircuitDBError(f"circuit-tracer needs transcoders for layers 0..{len(coders) - 1}, got {sorted(coders)}")
    if not all(isinstance(c, Transcoder) for c in coders.values()):
        raise CircuitDBError("circuit-tracer transcoder sets hold per-layer transcoders (kind: plt) only")
    first = coders[0].activation
    config = {
        "model_name": model_name,
        "model_kind": "transcoder_set",
        "feature_input_hook": "mlp.hook_in",
        "feature_output_hook": "hook_mlp_out",
        "activation": FAMILY_NAMES[first.family],
        "transcoders": [f"layer_{layer}.safetensors" for layer in sorted(coders)],
    }
    if first.k is not None:
        config["k"] = first.k

    def write(folder: Path) -> None:
        for layer, coder in coders.items():
            tensors = {n: getattr(coder, n).detach().contiguous() for n in ("W_enc", "W_dec", "b_enc", "b_dec")}
            if coder.W_skip is not None:
                tensors["W_skip"] = coder.W_skip.detach().contiguous()
            threshold = coder.activation.export_threshold()
            if threshold is not None:
                tensors["activation_function.threshold"] = threshold.contiguous()
            save_file(tensors, folder / f"layer_{layer}.safetensors")
        (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    write_folder(directory, write)


def export_clt(clt: CrossLayerTranscoder, directory: Path, model_name: str) -> None:
    """Write a CLT as circuit-tracer reads one: W_enc_{i} / W_dec_{i} files per source layer."""
    if clt.activations[0].family == "topk":
        raise CircuitDBError("circuit-tracer's CLT loader knows ReLU and JumpReLU only; train the CLT with one of them")
    config = {
        "model_name": model_name,
        "model_kind": "cross_layer_transcoder",
        "feature_input_hook": "mlp.hook_in",
        "feature_output_hook": "hook_mlp_out",
    }

    def write(folder: Path) -> None:
        for i in range(clt.n_layers):
            encoder = {f"W_enc_{i}": clt.W_enc[i], f"b_enc_{i}": clt.b_enc[i], f"b_dec_{i}": clt.b_dec[i]}
            threshold = clt.activations[i].export_threshold()
            if threshold is not None:
                encoder[f"threshold_{i}"] = threshold
            save_file({k: v.detach().contiguous() for k, v in encoder.items()}, folder / f"W_enc_{i}.safetensors")
            save_file({f"W_dec_{i}": clt.W_dec[i].detach().contiguous()}, folder / f"W_dec_{i}.safetensors")
        (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    write_folder(directory, write)

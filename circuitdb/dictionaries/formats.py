"""Dictionary files: our own format, circuit-tracer's transcoder sets and SAELens' SAE folders.

- ours: `<dir>/config.json` (format tag, DictionaryConfig, shapes, hooks, model) + `weights.safetensors`;
- circuit-tracer: `layer_{i}.safetensors` (W_enc/W_dec [n_latents, d], b_enc, b_dec, optional W_skip,
  `activation_function.threshold` for JumpReLU) + `config.yaml` (model_kind: transcoder_set, hooks,
  activation, k, transcoders: [files]);
- SAELens: `cfg.json` + `sae_weights.safetensors` with W_enc [d_in, d_sae], W_dec [d_sae, d_in],
  b_enc, b_dec and `threshold` for JumpReLU.
Every writer stages files in a temporary folder and renames it into place: a folder that exists is complete.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from circuitdb.config import DictionaryConfig
from circuitdb.dictionaries.cross_layer_transcoder import CrossLayerTranscoder
from circuitdb.dictionaries.sparse_coder import SparseCoder
from circuitdb.errors import CircuitDBError
from circuitdb.models import HookPoint

FORMAT = "circuitdb-dictionary"
TRANSFORMERLENS_HOOKS = {
    "resid_pre": "hook_resid_pre",
    "attn_out": "hook_attn_out",
    "mlp_in": "ln2.hook_normalized",
    "mlp_out": "hook_mlp_out",
    "resid_post": "hook_resid_post",
}


def _write_folder(directory: Path, write: Callable[[Path], None]) -> None:
    """Run `write(staging)` and move the staging folder to `directory`, replacing an older one."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
    try:
        write(staging)
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(staging, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(path)
    except (SafetensorError, OSError):
        raise CircuitDBError(f"not a readable safetensors file: {path}") from None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        raise CircuitDBError(f"missing or corrupt dictionary config: {path}") from None


def _thresholds(coder: SparseCoder) -> torch.Tensor | None:
    """Per-latent thresholds of a JumpReLU-like encoder (BatchTopK's shared one is broadcast)."""
    if coder.cfg.activation == "jumprelu":
        return coder.jumprelu.log_threshold.exp().detach()
    if coder.cfg.activation == "batchtopk":
        return coder.batch_topk.threshold.detach().expand(coder.cfg.n_latents).clone()
    return None


def _from_tensors(cfg: DictionaryConfig, tensors: dict[str, torch.Tensor], threshold: torch.Tensor | None):
    d_out, d_in = tensors["W_dec"].shape[1], tensors["W_enc"].shape[1]
    coder = SparseCoder(cfg, d_in, d_out)
    state = {k: v.float() for k, v in tensors.items() if k in ("W_enc", "W_dec", "b_enc", "b_dec", "W_skip")}
    if threshold is not None:
        state["jumprelu.log_threshold"] = threshold.float().clamp_min(1e-12).log()
    coder.load_state_dict(state)
    return coder.eval()


# --- our format -----------------------------------------------------------------------------------


def save_dictionary(coder: SparseCoder | CrossLayerTranscoder, directory: Path, meta: dict) -> None:
    """Save to our format; `meta` (model, hooks, layer, metrics...) goes into config.json."""
    config = {"format": FORMAT, "version": 1, "dictionary": dataclasses.asdict(coder.cfg), "d_in": coder.d_in}
    config |= {"d_out": coder.d_out, "n_layers": getattr(coder, "n_layers", 1), **meta}

    def write(folder: Path) -> None:
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in coder.state_dict().items()}, folder / "weights.safetensors"
        )
        (folder / "config.json").write_text(json.dumps(config, indent=1, default=str))

    _write_folder(directory, write)


def load_dictionary(directory: Path) -> tuple[SparseCoder | CrossLayerTranscoder, dict]:
    directory = Path(directory)
    config = _read_json(directory / "config.json")
    if config.get("format") != FORMAT:
        raise CircuitDBError(f"{directory} is not a circuitdb dictionary (config.json has no format {FORMAT!r})")
    cfg = DictionaryConfig(**config["dictionary"])
    if cfg.kind == "clt":
        coder = CrossLayerTranscoder(cfg, config["n_layers"], config["d_in"])
    else:
        coder = SparseCoder(cfg, config["d_in"], config["d_out"])
    try:
        coder.load_state_dict(_load_tensors(directory / "weights.safetensors"))
    except RuntimeError as exc:
        raise CircuitDBError(f"{directory}: weights do not match config.json ({str(exc).splitlines()[0]})") from None
    return coder.eval(), config


# --- circuit-tracer -----------------------------------------------------------------------------


def export_circuit_tracer(coders: dict[int, SparseCoder], directory: Path, model_name: str) -> None:
    """Write per-layer transcoders as a circuit-tracer transcoder set (layers must be 0..L-1)."""
    if sorted(coders) != list(range(len(coders))):
        raise CircuitDBError(f"circuit-tracer needs transcoders for layers 0..{len(coders) - 1}, got {sorted(coders)}")
    first = coders[0].cfg
    if any(c.cfg.kind != "plt" for c in coders.values()):
        raise CircuitDBError("circuit-tracer transcoder sets hold per-layer transcoders (kind: plt) only")
    activation = {"topk": "topk", "relu": "relu"}.get(first.activation, "jump_relu")
    config = {
        "model_name": model_name,
        "model_kind": "transcoder_set",
        "feature_input_hook": "mlp.hook_in",
        "feature_output_hook": "hook_mlp_out",
        "activation": activation,
        "transcoders": [f"layer_{layer}.safetensors" for layer in sorted(coders)],
    }
    if activation == "topk":
        config["k"] = first.k

    def write(folder: Path) -> None:
        for layer, coder in coders.items():
            tensors = {n: getattr(coder, n).detach().contiguous() for n in ("W_enc", "W_dec", "b_enc", "b_dec")}
            if coder.W_skip is not None:
                tensors["W_skip"] = coder.W_skip.detach().contiguous()
            threshold = _thresholds(coder)
            if threshold is not None:
                tensors["activation_function.threshold"] = threshold.contiguous()
            save_file(tensors, folder / f"layer_{layer}.safetensors")
        (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    _write_folder(directory, write)


def import_circuit_tracer(directory: Path) -> dict[int, SparseCoder]:
    """Per-layer transcoders from a circuit-tracer transcoder-set folder (config.yaml + layer files)."""
    directory = Path(directory)
    try:
        config = yaml.safe_load((directory / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        raise CircuitDBError(f"{directory}: no readable circuit-tracer config.yaml") from None
    if not isinstance(config, dict) or config.get("model_kind") != "transcoder_set":
        raise CircuitDBError(f"{directory}/config.yaml: model_kind must be transcoder_set")
    files = config.get("transcoders") or sorted(p.name for p in directory.glob("layer_*.safetensors"))
    coders = {}
    for layer, name in enumerate(files):
        path = Path(name) if Path(name).is_absolute() else directory / name
        tensors = _load_tensors(path)
        threshold = tensors.get("activation_function.threshold")
        activation = config.get("activation") or ("jump_relu" if threshold is not None else "relu")
        cfg = DictionaryConfig(
            kind="plt",
            activation={"topk": "topk", "relu": "relu"}.get(activation, "jumprelu"),
            n_latents=tensors["b_enc"].shape[0],
            k=int(config.get("k") or 1),
            skip="W_skip" in tensors,
        )
        coders[layer] = _from_tensors(cfg, tensors, threshold if cfg.activation == "jumprelu" else None)
    return coders


def export_circuit_tracer_clt(clt: CrossLayerTranscoder, directory: Path, model_name: str) -> None:
    """Write a CLT as circuit-tracer reads one: W_enc_{i} / W_dec_{i} files per source layer."""
    if clt.cfg.activation == "topk":
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
            if clt.cfg.activation == "jumprelu":
                encoder[f"threshold_{i}"] = clt.jumprelus[i].log_threshold.exp()
            save_file({k: v.detach().contiguous() for k, v in encoder.items()}, folder / f"W_enc_{i}.safetensors")
            save_file({f"W_dec_{i}": clt.W_dec[i].detach().contiguous()}, folder / f"W_dec_{i}.safetensors")
        (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    _write_folder(directory, write)


def import_circuit_tracer_clt(directory: Path) -> CrossLayerTranscoder:
    """A CLT from circuit-tracer files (W_enc_{i}.safetensors with b_enc/b_dec/threshold, W_dec_{i}.safetensors)."""
    directory = Path(directory)
    n_layers = len(list(directory.glob("W_enc_*.safetensors")))
    if n_layers == 0:
        raise CircuitDBError(f"{directory}: no W_enc_*.safetensors files of a circuit-tracer CLT")
    encoders = [_load_tensors(directory / f"W_enc_{i}.safetensors") for i in range(n_layers)]
    decoders = [_load_tensors(directory / f"W_dec_{i}.safetensors")[f"W_dec_{i}"] for i in range(n_layers)]
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
        state |= {f"jumprelus.{i}.log_threshold": t.clamp_min(1e-12).log() for i, t in enumerate(thresholds)}
    try:
        clt.load_state_dict({k: v.float() for k, v in state.items()})
    except RuntimeError as exc:
        raise CircuitDBError(
            f"{directory}: CLT tensors have inconsistent shapes ({str(exc).splitlines()[0]})"
        ) from None
    return clt.eval()


# --- SAELens ------------------------------------------------------------------------------------


def export_saelens(coder: SparseCoder, directory: Path, hook: str, model_name: str) -> None:
    """Write an SAE as a SAELens folder (cfg.json + sae_weights.safetensors)."""
    if coder.cfg.kind != "sae":
        raise CircuitDBError("SAELens format holds SAEs (kind: sae); export transcoders to circuit-tracer")
    point = HookPoint.parse(hook)
    threshold = _thresholds(coder)
    architecture = {"topk": "topk", "relu": "standard"}.get(coder.cfg.activation, "jumprelu")
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
        "metadata": {"circuitdb_hook": hook},
    }
    if architecture == "topk":
        config |= {"k": coder.cfg.k, "activation_fn_kwargs": {"k": coder.cfg.k}}
    tensors = {
        "W_enc": coder.W_enc.detach().T.contiguous(),
        "W_dec": coder.W_dec.detach().contiguous(),
        "b_enc": coder.b_enc.detach().contiguous(),
        "b_dec": coder.b_dec.detach().contiguous(),
    }
    if threshold is not None:
        tensors["threshold"] = threshold.contiguous()

    def write(folder: Path) -> None:
        save_file(tensors, folder / "sae_weights.safetensors")
        (folder / "cfg.json").write_text(json.dumps(config, indent=1))

    _write_folder(directory, write)


def import_saelens(directory: Path) -> SparseCoder:
    directory = Path(directory)
    config = _read_json(directory / "cfg.json")
    tensors = _load_tensors(directory / "sae_weights.safetensors")
    if "W_enc" not in tensors or tensors["W_enc"].shape != (config.get("d_in"), config.get("d_sae")):
        raise CircuitDBError(f"{directory}: W_enc is not [d_in, d_sae] as cfg.json says")
    architecture = config.get("architecture", "standard")
    k = config.get("k") or config.get("activation_fn_kwargs", {}).get("k") or 1
    activation = {"topk": "topk", "standard": "relu", "jumprelu": "jumprelu"}.get(architecture)
    if activation is None:
        raise CircuitDBError(f"{directory}: unsupported SAELens architecture {architecture!r}")
    if config.get("normalize_activations", "none") not in ("none", None):
        raise CircuitDBError(f"{directory}: SAELens activation normalization is not supported; fold it first")
    cfg = DictionaryConfig(kind="sae", activation=activation, n_latents=config["d_sae"], k=int(k))
    tensors = {**tensors, "W_enc": tensors["W_enc"].T}
    if not config.get("apply_b_dec_to_input", True):  # we always centre by b_dec: compensate in b_enc
        tensors["b_enc"] = tensors["b_enc"] + tensors["W_enc"] @ tensors["b_dec"]
    return _from_tensors(cfg, tensors, tensors.get("threshold") if activation == "jumprelu" else None)

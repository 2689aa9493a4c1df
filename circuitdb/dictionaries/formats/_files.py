"""What the format modules share: staged writes, checked reads, layer numbers from names, and one
constructor that turns a file's tensors (in whatever orientation) into a coder."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file

from circuitdb.config import DictionaryConfig
from circuitdb.dictionaries.activations import make_activation
from circuitdb.dictionaries.sparse_coder import SparseCoder
from circuitdb.errors import CircuitDBError

_LAYER_IN_NAME = re.compile(r"(?:^|[/_.\-])(?:layers?|W_enc|W_dec)[_.\-]?(\d+)(?=$|[/_.\-])", re.IGNORECASE)


def layer_in_name(path: str) -> int | None:
    """The layer a file's path names (`layer_12.safetensors`, `layers.12.mlp`, `layer_3/width_16k/…`,
    `W_enc_12`), or None. The last such number counts, so a folder `layers/` above does not."""
    found = _LAYER_IN_NAME.findall(path)
    return int(found[-1]) if found else None


def write_folder(directory: Path, write: Callable[[Path], None]) -> None:
    """Run `write(staging)` and move the staging folder to `directory`, replacing an older one:
    a folder that exists is complete."""
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


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors or .npz file, as float32 where they are floating point."""
    try:
        if path.suffix == ".npz":
            with np.load(path) as arrays:
                tensors = {k: torch.from_numpy(np.asarray(arrays[k])) for k in arrays.files}
        else:
            tensors = load_file(path)
    except (SafetensorError, OSError, ValueError):
        raise CircuitDBError(f"not a readable {path.suffix.lstrip('.') or 'weights'} file: {path}") from None
    return {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}


def read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        raise CircuitDBError(f"missing or corrupt dictionary config: {path}") from None
    if not isinstance(value, dict):
        raise CircuitDBError(f"{path}: expected a JSON object")
    return value


def read_yaml(path: Path) -> dict:
    try:
        value = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        raise CircuitDBError(f"missing or corrupt config: {path}") from None
    if not isinstance(value, dict):
        raise CircuitDBError(f"{path}: expected a mapping")
    return value


def require(tensors: dict[str, torch.Tensor], names: tuple[str, ...], source: Path | str) -> None:
    missing = [name for name in names if name not in tensors]
    if missing:
        raise CircuitDBError(f"{source}: missing tensors {', '.join(missing)} (has {', '.join(sorted(tensors))})")


def as_rows(matrix: torch.Tensor, n_latents: int, name: str, source: Path | str) -> torch.Tensor:
    """`matrix` as [n_latents, d] whichever way the file stores it ([n, d] or [d, n])."""
    if matrix.ndim == 2 and matrix.shape[0] == n_latents:
        return matrix
    if matrix.ndim == 2 and matrix.shape[1] == n_latents:
        return matrix.T
    raise CircuitDBError(f"{source}: {name} has shape {tuple(matrix.shape)}; expected one side of {n_latents} latents")


def member_folders(folder: Path, is_member: Callable[[Path], bool]) -> list[Path]:
    """`folder` itself when it is one dictionary's folder, else its subfolders that are (sorted)."""
    return [folder] if is_member(folder) else sorted(p for p in folder.iterdir() if p.is_dir() and is_member(p))


def make_coder(
    cfg: DictionaryConfig,
    tensors: dict[str, torch.Tensor],
    source: Path | str,
    *,
    threshold: torch.Tensor | None = None,
    centres_input: bool | None = None,
) -> SparseCoder:
    """A coder from a file's tensors under our names (W_enc, b_enc, W_dec, b_dec, optional W_skip); the
    matrices may be [n, d] or [d, n]; `threshold` for JumpReLU.

    `centres_input` says whether the file's encoder subtracts b_dec from its input. Our SAEs always
    do and our transcoders never do; where the file differs, b_enc absorbs W_enc·b_dec (same latents).
    """
    require(tensors, ("W_enc", "b_enc", "W_dec", "b_dec"), source)
    b_enc, b_dec, W_skip = tensors["b_enc"], tensors["b_dec"], tensors.get("W_skip")
    n = b_enc.shape[0]
    W_enc, W_dec = as_rows(tensors["W_enc"], n, "W_enc", source), as_rows(tensors["W_dec"], n, "W_dec", source)
    d_in, d_out = W_enc.shape[1], W_dec.shape[1]
    if b_dec.shape != (d_out,):
        raise CircuitDBError(f"{source}: b_dec has shape {tuple(b_dec.shape)}; W_dec writes width {d_out}")
    kind = SparseCoder.of_kind(cfg.kind)
    if kind.reconstructs_input and d_in != d_out:
        raise CircuitDBError(f"{source}: an SAE reads and writes one width; W_enc reads {d_in}, W_dec writes {d_out}")
    if centres_input is not None and centres_input != kind.centres_input:
        b_enc = b_enc - W_enc @ b_dec if centres_input else b_enc + W_enc @ b_dec
    activation = make_activation(cfg)
    if threshold is not None:
        if threshold.numel() not in (1, n):
            raise CircuitDBError(f"{source}: threshold has {threshold.numel()} values for {n} latents")
        activation.set_threshold(threshold.float().reshape(-1).expand(n))
    coder = SparseCoder(cfg, d_in, d_out, activation)
    state = {"W_enc": W_enc, "W_dec": W_dec, "b_enc": b_enc, "b_dec": b_dec}
    if cfg.skip:
        if W_skip is None or W_skip.shape != (d_out, d_in):
            raise CircuitDBError(f"{source}: W_skip must be [{d_out}, {d_in}]")
        state["W_skip"] = W_skip
    with torch.no_grad():
        for name, value in state.items():
            getattr(coder, name).copy_(value.float())
    return coder.eval()

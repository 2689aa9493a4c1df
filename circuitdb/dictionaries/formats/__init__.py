"""Dictionary file formats, one module each, found by this registry.

A format module is named after its format (`circuit_tracer.py` is `circuit-tracer`), opens with a
docstring whose first sentence describes its files, and defines `NAME`, `recognizes(folder) -> bool`,
`read(folder, hint) -> DictionarySet` and `write(dictionaries, folder)`. `read_dictionaries` asks every
module whether it recognizes the folder, so a `--transcoders` folder or `dictionary import` needs no
format named, and adding a format is one new file in this package (the CLI lists it by itself).

- circuitdb: ours (config.json + weights.safetensors per dictionary, the store's layout);
- circuit-tracer: transcoder sets (config.yaml + per-layer files) and cross-layer transcoders;
- gemmascope: `params.npz` per layer (W_enc [d, n], W_dec [n, d], b_enc, b_dec, threshold);
- sparsify: `cfg.json` + `sae.safetensors` per hook folder such as `layers.12.mlp`;
- saelens: `cfg.json` + `sae_weights.safetensors` (standard/ReLU, TopK, JumpReLU).
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import shutil
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType

import polars as pl

from circuitdb.dictionaries.formats.circuitdb import FORMAT, load_dictionary, save_dictionary
from circuitdb.dictionaries.sets import DictionarySet
from circuitdb.errors import CircuitDBError
from circuitdb.store.space import is_out_of_space, out_of_space


@dataclass(frozen=True)
class ReadHint:
    """What a folder's files may not say by themselves; a format uses what applies to it."""

    kind: str | None = None
    """'sae' or 'plt' where the files do not tell (GemmaScope's params.npz)."""
    hook: str | None = None
    """Hook kind an SAE reads, where the files do not tell (e.g. resid_post)."""
    name: str | None = None
    """Name for the set (default: the folder's name)."""

    def __post_init__(self) -> None:
        if self.kind not in (None, "sae", "plt"):
            raise CircuitDBError(f"the kind of a published per-layer set is sae or plt, got {self.kind!r}")


def format_names() -> list[str]:
    """The formats' names, from their modules' file names, without importing them (a CLI lists them as its
    choices before it knows whether the command will need torch)."""
    return sorted(
        info.name.replace("_", "-") for info in pkgutil.iter_modules(__path__) if not info.name.startswith("_")
    )


@cache
def formats() -> dict[str, ModuleType]:
    """Every format module of this package, by NAME."""
    found = {name: importlib.import_module(f"{__name__}.{name.replace('-', '_')}") for name in format_names()}
    for name, module in found.items():
        if module.NAME != name:
            raise RuntimeError(
                f"format module {module.__name__} calls itself {module.NAME!r}: name it after its format"
            )
    return found


def check_format(name: str) -> None:
    """One line when no module of this package writes and reads format `name`."""
    if name not in format_names():
        raise CircuitDBError(f"unknown dictionary format {name!r}; expected one of {', '.join(format_names())}")


def format_table() -> pl.DataFrame:
    """Each format with the first sentence of its module's docstring."""
    openings = {name: " ".join((module.__doc__ or "").split()) for name, module in formats().items()}
    described = [(name, text.split(". ")[0].rstrip(".") + ".") for name, text in openings.items()]
    return pl.DataFrame(described, schema=["format", "files"], orient="row")


def detect(folder: Path) -> ModuleType:
    """The one format that recognizes `folder`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CircuitDBError(f"dictionary folder {folder} does not exist")
    matches = [module for module in formats().values() if module.recognizes(folder)]
    if not matches:
        raise CircuitDBError(
            f"{folder}: no known dictionary format ({', '.join(formats())}); see `circuitdb dictionary import --help`"
        )
    if len(matches) > 1:
        names = ", ".join(m.NAME for m in matches)
        raise CircuitDBError(f"{folder}: looks like several formats ({names}); pass --format")
    return matches[0]


def read_dictionaries(folder: Path, fmt: str | None = None, hint: ReadHint | None = None) -> DictionarySet:
    """The dictionary set in `folder`, in format `fmt` or the one that recognizes it."""
    folder = Path(folder)
    if fmt is None:
        module = detect(folder)
    else:
        check_format(fmt)
        module = formats()[fmt]
        if not folder.is_dir():
            raise CircuitDBError(f"dictionary folder {folder} does not exist")
    return module.read(folder, hint or ReadHint())


def write_dictionaries(dictionaries: DictionarySet, fmt: str, folder: Path, overwrite: bool = False) -> None:
    """Write the set in format `fmt` into `folder`, which may exist: written whole in a staging folder
    beside it, then moved in file by file. A folder that holds anything is refused unless `overwrite`,
    and then only the files the set writes are replaced: nothing circuitdb did not write is deleted."""
    check_format(fmt)
    folder = Path(folder)
    check_export_target(folder, overwrite)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        formats()[fmt].write(dictionaries, staging / "set")
        folder.mkdir(exist_ok=True)
        _move_into(staging / "set", folder)
    except Exception as failure:
        if is_out_of_space(failure):
            raise out_of_space(folder) from None
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def check_export_target(folder: Path, overwrite: bool) -> None:
    """One line, before any work, when `folder` cannot take an export."""
    if folder.exists() and not folder.is_dir():
        raise CircuitDBError(f"{folder} is a file, not a folder")
    if not folder.parent.is_dir():
        raise CircuitDBError(f"folder {folder.parent} does not exist")
    writable = folder if folder.exists() else folder.parent
    if not os.access(writable, os.W_OK | os.X_OK):
        raise CircuitDBError(f"cannot write into {writable}: permission denied")
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise CircuitDBError(f"{folder} is not empty; pass --overwrite to replace the files the export writes there")


def _move_into(source: Path, target: Path) -> None:
    """Move `source`'s files into `target`, replacing same-named files and keeping every other one."""
    for entry in source.iterdir():
        destination = target / entry.name
        if entry.is_dir() and destination.is_dir():
            _move_into(entry, destination)
        else:
            if destination.is_dir():
                shutil.rmtree(destination)
            os.replace(entry, destination)


__all__ = [
    "FORMAT",
    "DictionarySet",
    "ReadHint",
    "detect",
    "format_names",
    "formats",
    "load_dictionary",
    "read_dictionaries",
]
__all__ += ["save_dictionary", "write_dictionaries"]

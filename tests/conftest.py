"""Tiny random models built from configs, with a small BPE tokenizer: no hub, seconds to build."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma3TextConfig,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    MistralConfig,
    PreTrainedTokenizerFast,
    Qwen3Config,
)

from circuitdb.models import LoadedModel, load_model
from tests.servers import free_port, start_s3_server

VOCAB = 384
TRAINING_TEXT = [
    "The quick brown fox jumps over the lazy dog. " * 4,
    "Python is a programming language that lets you work quickly and integrate systems effectively.",
    "def function(argument): return argument * 2  # a small example of code with numbers 0123456789",
]


def _tokenizer() -> PreTrainedTokenizerFast:
    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=["<bos>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(TRAINING_TEXT, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<bos>", eos_token="<eos>")


_SHAPE = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    tie_word_embeddings=True,
)
_CONFIGS = {
    "llama": lambda n: LlamaConfig(**_SHAPE, num_hidden_layers=n),
    "llama3": lambda n: LlamaConfig(  # Llama-3.x rope scaling
        **_SHAPE,
        num_hidden_layers=n,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
        },
    ),
    "qwen3": lambda n: Qwen3Config(**_SHAPE, num_hidden_layers=n, head_dim=16),  # q/k norms
    "mistral": lambda n: MistralConfig(**_SHAPE, num_hidden_layers=n, sliding_window=4),
    "gemma2": lambda n: Gemma2Config(
        **_SHAPE,
        num_hidden_layers=n,
        head_dim=16,
        sliding_window=4,  # shorter than the test prompts, so the sliding layers differ from the global ones
        attn_logit_softcapping=5.0,  # small caps so that soft-capping changes values
        final_logit_softcapping=3.0,
        query_pre_attn_scalar=16,
    ),
    "gemma3": lambda n: Gemma3TextConfig(
        **_SHAPE,
        num_hidden_layers=n,
        head_dim=16,
        sliding_window=4,
        layer_types=["sliding_attention", "full_attention"] * (n // 2) + ["sliding_attention"] * (n % 2),
        query_pre_attn_scalar=16,
    ),
}
ARCHITECTURES = tuple(_CONFIGS) + ("gpt2",)


def _build(kind: str, directory: Path, n_layers: int = 3) -> Path:
    torch.manual_seed(0)
    if kind == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=n_layers, n_head=4, n_positions=128))
    else:
        model = AutoModelForCausalLM.from_config(_CONFIGS[kind](n_layers))
        with torch.no_grad():  # norm gains away from their init, so that (1 + w) vs w would show
            for name, parameter in model.named_parameters():
                if "norm" in name:
                    parameter.add_(torch.randn_like(parameter) * 0.2)
    model.save_pretrained(directory)
    _tokenizer().save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random model folders by architecture, built on first use."""

    class Dirs(dict):
        def __missing__(self, kind: str) -> Path:
            self[kind] = _build(kind, tmp_path_factory.mktemp(f"tiny-{kind}"))
            return self[kind]

    return Dirs()


@pytest.fixture(params=ARCHITECTURES)
def any_architecture(request: pytest.FixtureRequest, model_dirs) -> LoadedModel:
    return load_model(str(model_dirs[request.param]), device="cpu")


@pytest.fixture(scope="session")
def llama_dir(model_dirs) -> Path:
    return model_dirs["llama"]


@pytest.fixture(scope="session")
def deep_llama_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """Tiny Llama folders by layer count (12, 30): enough layers that layer numbers read from file names
    cannot line up with their order by luck."""

    class Dirs(dict):
        def __missing__(self, n_layers: int) -> Path:
            self[n_layers] = _build("llama", tmp_path_factory.mktemp(f"tiny-llama-{n_layers}"), n_layers=n_layers)
            return self[n_layers]

    return Dirs()


@pytest.fixture(scope="session")
def llama12_dir(deep_llama_dirs) -> Path:
    return deep_llama_dirs[12]


@pytest.fixture(scope="session")
def gpt2_dir(model_dirs) -> Path:
    return model_dirs["gpt2"]


@pytest.fixture(scope="session")
def llama(llama_dir: Path) -> LoadedModel:
    return load_model(str(llama_dir), device="cpu")


@pytest.fixture(scope="session")
def gpt2(gpt2_dir: Path) -> LoadedModel:
    return load_model(str(gpt2_dir), device="cpu")


@pytest.fixture(params=["llama", "gpt2"])
def tiny(request: pytest.FixtureRequest) -> LoadedModel:
    return request.getfixturevalue(request.param)


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(" ".join(TRAINING_TEXT) * 20)
    return path


@pytest.fixture(scope="session")
def tiny_dictionaries() -> str:
    """The `dictionaries:` section of a tiny project: small, trained long enough to beat the mean (what its
    quality check then demands)."""
    return (
        "dictionaries:\n  dictionary:\n    n_latents: 64\n    k: 4\n"
        "  train:\n    batch_size: 32\n    epochs: 20\n    warmup_steps: 2\n  ce_eval_blocks: 2\n"
        "  max_fvu_excl_pos0: 1.2\n  max_dead_frac: 0.5\n"  # quality on a held-out set of ~32 tokens
    )


@pytest.fixture
def cli(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch):
    """Run the real `circuitdb` entry point in-process: cli("sql", "...") -> (exit code, stdout, stderr)."""
    from query.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["circuitdb", *args])
        try:
            main()
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture(scope="session")
def built_store(tmp_path_factory: pytest.TempPathFactory, llama_dir: Path) -> Path:
    """A whole tiny store (corpus, activations, dictionaries, features, vectors, the default prompts' graphs),
    built once; tests that damage it work on a copy (`shutil.copytree`)."""
    from circuitdb.config import load_config
    from circuitdb.project import Project
    from orchestration.build import build_all

    folder = tmp_path_factory.mktemp("built")
    (folder / "corpus.txt").write_text(" ".join(TRAINING_TEXT) * 20)
    config = folder / "circuitdb.yaml"
    config.write_text(
        f"store: {folder / 'store'}\nmodel:\n  spec: {llama_dir}\n  device: cpu\n"
        f"corpus:\n  source: {folder / 'corpus.txt'}\n  context: 16\n  max_tokens: 256\n"
        "dictionaries:\n  dictionary:\n    n_latents: 64\n    k: 4\n"
        "  train:\n    batch_size: 32\n    epochs: 2\n    warmup_steps: 2\n  ce_eval_blocks: 2\n"
    )
    build_all(Project(load_config(config)))
    return folder / "store"


@pytest.fixture(scope="session")
def s3_endpoint() -> str:
    """A real S3-compatible server (moto's standalone mode) on 127.0.0.1 for the session; the AWS
    environment points at it while the session lasts."""
    endpoint, server = start_s3_server()
    settings = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
    settings["AWS_REGION"] = "us-east-1"
    saved = {key: os.environ.get(key) for key in settings}
    os.environ.update(settings)
    yield endpoint
    server.terminate()
    server.wait()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def s3_store(s3_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The URI of an empty store in a fresh bucket, read through a fresh local mirror."""
    import boto3

    bucket = f"lab-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    monkeypatch.setenv("CIRCUITDB_CACHE", str(tmp_path / "mirror"))
    return f"s3://{bucket}/stores/tiny"


def upload_store(folder: Path, uri: str, staging: Path) -> None:
    """Publish a built store folder at `uri` as a writer would (through a mirror of its own)."""
    from circuitdb.store.remote import Mirror

    saved = os.environ.get("CIRCUITDB_CACHE")
    os.environ["CIRCUITDB_CACHE"] = str(staging)
    try:
        writer = Mirror(uri)
        shutil.copytree(folder, writer.root, dirs_exist_ok=True)
        writer.push()
    finally:
        os.environ.pop("CIRCUITDB_CACHE")
        if saved is not None:
            os.environ["CIRCUITDB_CACHE"] = saved


def _postgres_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return found[-1].parent if found else None


class PostgresServer:
    """A real PostgreSQL server (Debian's `postgresql`, which .ci/run installs) on 127.0.0.1, its data in a
    folder of its own; tests may stop it and start it again. It runs as the `postgres` user under root."""

    def __init__(self, binaries: Path) -> None:
        self.binaries = binaries
        self.folder = Path(tempfile.mkdtemp(prefix="circuitdb-postgres-"))  # not under pytest's root-only folders
        self._as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as_user:
            shutil.chown(self.folder, "postgres")
        self.data, self.port = self.folder / "data", free_port()
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust")
        self.start()
        self.settings = self.database("dagster")
        """The DAGSTER_PG_* settings deploy/dagster.yaml reads (the session's shared database)."""

    def database(self, name: str) -> dict[str, str]:
        """A new database on this server: the DAGSTER_PG_* settings that name it."""
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)
        return {
            "DAGSTER_PG_HOST": "127.0.0.1",
            "DAGSTER_PG_PORT": str(self.port),
            "DAGSTER_PG_DB": name,
            "DAGSTER_PG_USER": "postgres",
            "DAGSTER_PG_PASSWORD": "",
        }

    def _run(self, program: str, *args: str) -> None:
        subprocess.run([*self._as_user, str(self.binaries / program), *args], check=True, capture_output=True)

    def start(self) -> None:
        options = f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.folder}"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.folder / "log"), "-w", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "stop")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    binaries = _postgres_bin()
    if binaries is None:
        pytest.skip("PostgreSQL is not installed (apt-get install -y postgresql; .ci/run does)")
    server = PostgresServer(binaries)
    yield server
    server.stop()
    shutil.rmtree(server.folder, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres(postgres_server: PostgresServer) -> dict[str, str]:
    """The DAGSTER_PG_* settings of the session's PostgreSQL server."""
    return postgres_server.settings


class Always:
    """A chat model that answers every prompt with the same words (and counts the prompts)."""

    def __init__(self, answer: str) -> None:
        self.answer, self.name, self.prompts = answer, f"always-{answer}", []

    def reply(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        self.prompts += prompts
        return [self.answer for _ in prompts]

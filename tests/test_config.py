"""One validated configuration from defaults, circuitdb.yaml, environment and overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from circuitdb.config import load_config
from circuitdb.errors import CircuitDBError


def test_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file = tmp_path / "circuitdb.yaml"
    file.write_text("store: from-file\nmodel:\n  device: cpu\ncorpus:\n  context: 64\nharvest:\n  layers: [1, 2]\n")
    assert load_config(file).corpus.context == 64
    monkeypatch.setenv("CIRCUITDB_STORE", "from-env")
    config = load_config(file, {"model.device": "cuda", "corpus.max_tokens": "1000", "harvest.dtype": None})
    assert (config.store, config.model.device, config.corpus.max_tokens) == ("from-env", "cuda", 1000)
    assert config.harvest.layers == [1, 2] and config.harvest.dtype == "float16"
    assert load_config(file, {"harvest.layers": "0,3"}).harvest.layers == [0, 3]


def test_defaults_are_the_embedded_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CIRCUITDB_STORE", raising=False)
    monkeypatch.delenv("CIRCUITDB_DEVICE", raising=False)
    config = load_config()
    assert (config.model.spec, config.corpus.source, config.store) == ("embedded", "embedded", "./store")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("corpus:\n  contxt: 5\n", "unknown config field 'corpus.contxt'"),
        ("corpus:\n  context: many\n", "corpus.context must be int"),
        ("model:\n  device: tpu\n", "model.device"),
        ("harvest:\n  dtype: int8\n", "harvest.dtype"),
        ("harvest:\n  hooks: [mlp_in, nope]\n", "unknown hook kind 'nope'"),
        ("corpus: [1, 2]\n", "corpus must be a mapping"),
        ("key: [unclosed\n", "not valid YAML"),
        ("object_store:\n  threads: 0\n", "object_store.threads must be at least 1, got 0"),
        ("object_store:\n  request_timeout: 0\n", "object_store.request_timeout must be positive"),
        ("object_store:\n  retry_seconds: -1\n", "object_store.retry_seconds must be at least 0"),
    ],
)
def test_bad_values_name_the_field(tmp_path: Path, text: str, message: str) -> None:
    file = tmp_path / "circuitdb.yaml"
    file.write_text(text)
    with pytest.raises(CircuitDBError, match=message.replace("[", r"\[")):
        load_config(file)


def test_missing_config_file() -> None:
    with pytest.raises(CircuitDBError, match="config file not found"):
        load_config("/no/such/circuitdb.yaml")

"""Dagster resources: the project configuration, with the fields a run may override."""

from __future__ import annotations

import functools

import dagster as dg

from circuitdb.config import ProjectConfig, load_config
from circuitdb.corpus import TokenizedCorpus, load_stored_corpus
from circuitdb.explanations.chat import ChatModel, chat_model
from circuitdb.models import LoadedModel, load_model
from circuitdb.store import Store


class ProjectResource(dg.ConfigurableResource):
    """circuitdb.yaml + environment, with optional per-run overrides of store, model and device."""

    config_file: str | None = None
    """Path of a circuitdb.yaml; None reads ./circuitdb.yaml when present, else the embedded default."""
    store: str | None = None
    """Overrides `store`: the folder or object-store URI (s3://bucket/prefix) every asset writes to."""
    model: str | None = None
    """Overrides `model.spec`."""
    device: str | None = None
    """Overrides `model.device`: auto, cpu or cuda."""

    def load(self) -> ProjectConfig:
        overrides = {"store": self.store, "model.spec": self.model, "model.device": self.device}
        return load_config(self.config_file, overrides)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """A store on object storage: its local mirror is brought in step before the step runs."""
        Store(self.load().store).pull()

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        """...and what the step wrote is published after it, also when it failed: every file is whole, and
        a later step resumes from it (shards, checkpoints, finished layers)."""
        Store(self.load().store).push()

    def open_stage(self, device: str | None = None) -> tuple[ProjectConfig, Store, LoadedModel, TokenizedCorpus]:
        """What every model-running stage after the corpus starts from: config, store, model (on `device`,
        default the configured one), stored corpus."""
        config = self.load()
        store = Store(config.store)
        return (
            config,
            store,
            _model(config.model.spec, device or config.model.device),
            load_stored_corpus(store, config.corpus.name),
        )


@functools.lru_cache(maxsize=2)
def _model(spec: str, device: str) -> LoadedModel:
    """The model of a process's steps: per-layer steps run in one process load it once (the in-process build),
    each in its own process load their own (multiprocess or Kubernetes executors)."""
    return load_model(spec, device)


@functools.lru_cache(maxsize=2)
def explainer(spec: str, endpoint_model: str, device: str) -> ChatModel:
    """The chat model that explains (and scores) features, loaded once per process like the subject model."""
    return chat_model(spec, endpoint_model, device)

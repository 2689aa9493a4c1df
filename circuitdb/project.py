"""One project in one process: its effective configuration, its store, its model and its corpus.

Every face opens one and adapts it: a CLI command (`with Project.open(...)`), a Dagster run (the
`project` resource hands one out), the viewer (one per server) and the benchmarks. So the
configuration is parsed once, the store is resolved once (a local folder, or the local mirror of an
object-store URI: `Store`), the model is loaded once per process and spec, and the mirror is pulled
when the project is entered and pushed when it is left, also after a failure: every file in the store
is written whole, so what a failed command finished (shards, checkpoints, finished layers) is kept.

The model and the corpus are loaded on first use: a SQL question never imports torch.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from circuitdb.config import ProjectConfig, load_config
from circuitdb.errors import CircuitDBError
from circuitdb.store import Store

if TYPE_CHECKING:
    from circuitdb.attribution.transcoders import Transcoders
    from circuitdb.corpus import TokenizedCorpus
    from circuitdb.explanations.chat import ChatModel
    from circuitdb.models import LoadedModel


class Project:
    """A configuration and the store, model and corpus it names."""

    def __init__(self, config: ProjectConfig) -> None:
        self.config = config
        self.store = Store(config.store, config.object_store)
        self._pulled = False
        self._transcoders: dict[str, tuple[tuple, Transcoders]] = {}

    @classmethod
    def open(cls, config_file: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> Project:
        """The project of a config file (default: $CIRCUITDB_CONFIG, else ./circuitdb.yaml when present, else the
        embedded default) with dotted `overrides` (None values ignored: optional CLI flags pass straight through)."""
        return cls(load_config(config_file, dict(overrides or {})))

    def __enter__(self) -> Project:
        self._pull()
        return self

    def __exit__(self, kind: type[BaseException] | None, failure: BaseException | None, _: object) -> None:
        self.publish(failure)

    def publish(self, failure: BaseException | None = None) -> None:
        """Push what this process wrote (on object storage; all or nothing). A push that fails raises, unless
        the work itself failed: then `failure` stays the error reported and carries the push's as a note."""
        try:
            self.store.push()
        except CircuitDBError as push_failed:
            if failure is None:
                raise
            failure.add_note(f"and publishing what was finished failed too: {push_failed}")

    def built(self) -> Project:
        """This project, its store brought in step and checked to hold tables (what a question needs)."""
        self._pull()
        if not self.store.tables_dir.is_dir():
            raise CircuitDBError(f"store not found: {self.store.location} has no tables (run `circuitdb build` first)")
        return self

    def _pull(self) -> None:
        if not self._pulled:
            self.store.pull()
            self._pulled = True

    @property
    def model(self) -> LoadedModel:
        """The configured model on the configured device, loaded on first use."""
        return self.model_on(None)

    def model_on(self, device: str | None) -> LoadedModel:
        """The configured model on `device` (None: the configured one): per-layer steps claim a GPU each."""
        return _loaded_model(self.config.model.spec, device or self.config.model.device)

    def transcoders(self, name: str) -> Transcoders:
        """The store's dictionary set `name` as transcoders, loaded once and kept while the `dictionaries`
        table's files are unchanged (a long-lived process, the viewer, steers many times; loading 30 layers
        takes about a second)."""
        from circuitdb.attribution.transcoders import stored_transcoders

        files = self.store.partition_files("dictionaries")
        signature = tuple((path.name, path.stat().st_mtime_ns, path.stat().st_size) for path in files)
        kept = self._transcoders.get(name)
        if kept is None or kept[0] != signature:
            kept = self._transcoders[name] = (signature, stored_transcoders(self.store, name))
        return kept[1]

    @functools.cached_property
    def corpus(self) -> TokenizedCorpus:
        """The stored corpus the configuration names (built by the `corpus_tokens` asset)."""
        from circuitdb.corpus import load_stored_corpus

        return load_stored_corpus(self.store, self.config.corpus.name)

    def explainer(
        self, spec: str | None = None, endpoint_model: str | None = None, device: str | None = None
    ) -> ChatModel:
        """The chat model that explains and scores features (default: `explanations.explainer`), loaded once per
        process like the subject model."""
        chosen = self.config.explanations
        device = device or self.config.model.device
        return _chat_model(spec or chosen.explainer, endpoint_model or chosen.explainer_model, device)


@functools.lru_cache(maxsize=2)
def _loaded_model(spec: str, device: str) -> LoadedModel:
    """Models of this process: the in-process build's steps share one; each process of the multiprocess or
    Kubernetes executors loads its own."""
    from circuitdb.models import load_model

    return load_model(spec, device)


@functools.lru_cache(maxsize=2)
def _chat_model(spec: str, endpoint_model: str, device: str) -> ChatModel:
    from circuitdb.explanations.chat import chat_model

    return chat_model(spec, endpoint_model, device)

"""Explanations of features, written by a chat model from their exemplars, and scored as delphi scores them.

The explainer sees a feature's top and quantile exemplar windows (training split) with the tokens where it
fires marked `<<like this>>`, and the tokens its decoder promotes; it answers in one line. The scorer
then judges held-out windows of the corpus's eval split, which the explainer never saw: for detection,
windows where the feature fires and windows where it is silent; for fuzzing, firing windows marked right
or wrong (circuitdb/explanations/scoring.py holds the arithmetic).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from typing import NamedTuple

import polars as pl
import torch
from tqdm.auto import tqdm

from circuitdb.corpus import TokenizedCorpus
from circuitdb.dictionaries.data import ActivationSource
from circuitdb.dictionaries.sparse_coder import SparseCoder
from circuitdb.dictionaries.stored import stored_dictionary
from circuitdb.errors import CircuitDBError
from circuitdb.explanations.chat import ChatModel
from circuitdb.explanations.scoring import Sample, Score, detection, fuzzing
from circuitdb.features.statistics import FeatureStatsConfig, feature_statistics
from circuitdb.models import LoadedModel, capture, resolve_hooks
from circuitdb.store import TABLES, Store, layer_partition, parse_feature_id, read_table, write_partition

PROMPT_VERSION = "v1"
"""Changes whenever the explanation prompt does: explanations record it."""
TOP_SHOWN, MAX_NEW_TOKENS = 8, 40
EXPLAINED_AT_ONCE = 8
"""Prompts handed to the explainer per call: one step of the progress bar (and a local model's batch)."""
_SCORE_SCHEMA = {name: dtype for name, (dtype, _) in TABLES["explanation_scores"].columns.items()}


def _marked(sample: Sample) -> str:
    return "".join(f"<<{t}>>" if a > 0 else t for t, a in zip(sample.tokens, sample.activations, strict=True))


def explanation_prompt(windows: list[Sample], promoted: list[str]) -> str:
    """The explainer's prompt: marked windows, then the promoted tokens; asks for one line."""
    examples = "\n".join(f"{i + 1}. {_marked(w)}" for i, w in enumerate(windows))
    return (
        "We are studying a feature of a language model. In each text below, the tokens where the feature "
        "is active are marked <<like this>>.\n"
        f"{examples}\n"
        f"When active, it makes the model more likely to write: {', '.join(repr(t) for t in promoted[:8])}.\n"
        "In one short line, what does this feature detect? Answer with the description only."
    )


def _one_line(answer: str) -> str:
    lines = [line.strip() for line in answer.strip().splitlines() if line.strip()]
    return lines[0][:300] if lines else ""


def _partitions(feature_ids: list[str]) -> list[str]:
    """The per-layer partitions (features, exemplars, explanations, scores) that hold these features."""
    return sorted({layer_partition(*parse_feature_id(fid)[:2]) for fid in feature_ids})


def shown_windows(exemplars: pl.DataFrame) -> dict[str, list[Sample]]:
    """Per feature of `exemplars` (rows of that table): its top windows, then one per quantile group, best first."""
    top = exemplars.filter((pl.col("kind") == "top") & (pl.col("rank") < TOP_SHOWN))
    quantile = exemplars.filter((pl.col("kind") == "quantile") & (pl.col("rank") == 0))
    shown: dict[str, list[Sample]] = defaultdict(list)
    for row in pl.concat([top.sort("rank"), quantile.sort("group", descending=True)]).iter_rows(named=True):
        shown[row["feature_id"]].append(Sample(row["tokens"], row["values"]))
    return shown


def _merge(store: Store, table: str, rows: pl.DataFrame, key: list[str]) -> None:
    """Write `rows` into their (dictionary, layer) partitions, replacing earlier rows with the same `key`."""
    for (dictionary, layer), part in rows.group_by("dictionary", "layer"):
        partition = layer_partition(dictionary, layer)
        if store.fetch(store.table_file(table, partition)):
            earlier = read_table(store, table, partitions=[partition])
            part = pl.concat([earlier.join(part.select(key), on=key, how="anti"), part], how="diagonal_relaxed")
        write_partition(store, table, partition, part.sort("feature_id"))


def explanation_rows(explainer: ChatModel, features: pl.DataFrame, shown: dict[str, list[Sample]]) -> pl.DataFrame:
    """`explanations` rows for `features` (feature_id, dictionary, layer, index, top_logits), written by
    `explainer` from their `shown` windows."""
    silent = [fid for fid in features["feature_id"] if not shown.get(fid)]
    if silent:
        raise CircuitDBError(f"{', '.join(silent[:5])} never fired on the corpus: nothing to explain")
    features = features.sort("feature_id")
    prompts = [explanation_prompt(shown[r["feature_id"]], r["top_logits"]) for r in features.iter_rows(named=True)]
    answers: list[str] = []
    with tqdm(total=len(prompts), desc="explain", unit="feature", leave=False) as bar:
        for start in range(0, len(prompts), EXPLAINED_AT_ONCE):
            answers += explainer.reply(prompts[start : start + EXPLAINED_AT_ONCE], MAX_NEW_TOKENS)
            bar.update(len(prompts[start : start + EXPLAINED_AT_ONCE]))
    return features.select("feature_id", "dictionary", "layer", "index").with_columns(
        explanation=pl.Series([_one_line(a) for a in answers], dtype=pl.String),
        explainer=pl.lit(explainer.name),
        prompt_version=pl.lit(PROMPT_VERSION),
        created_at=pl.lit(datetime.now(UTC)),
    )


def explain_features(store: Store, explainer: ChatModel, feature_ids: list[str]) -> pl.DataFrame:
    """Explain each feature from its stored exemplars and top logits; rows stored in `explanations`."""
    partitions = _partitions(feature_ids)
    columns = ["feature_id", "dictionary", "layer", "index", "top_logits"]
    features = read_table(store, "features", columns, partitions).filter(pl.col("feature_id").is_in(feature_ids))
    unknown = sorted(set(feature_ids) - set(features["feature_id"]))
    if unknown:
        raise CircuitDBError(f"no statistics for {', '.join(unknown[:5])}; build the feature statistics first")
    columns = ["feature_id", "kind", "group", "rank", "tokens", "values"]
    exemplars = read_table(store, "exemplars", columns, partitions).filter(pl.col("feature_id").is_in(feature_ids))
    rows = explanation_rows(explainer, features, shown_windows(exemplars))
    _merge(store, "explanations", rows, ["feature_id", "explainer"])
    return rows


@torch.no_grad()
def hook_activations(lm: LoadedModel, hook: str, blocks: torch.Tensor) -> torch.Tensor:
    """The subject model's activations at `hook` over `blocks` [n, context] → [n, context, d], 8 blocks at a time."""
    hooked = resolve_hooks(lm, [hook])
    return torch.cat([capture(lm, blocks[i : i + 8].long(), hooked)[hook] for i in range(0, len(blocks), 8)])


@torch.no_grad()
def held_out_samples(
    lm: LoadedModel, coder: SparseCoder, acts: torch.Tensor, blocks: torch.Tensor, indices: list[int], window: int
) -> dict[int, tuple[list[Sample], list[Sample]]]:
    """Per latent: (windows where it fires, windows where it is silent) among `blocks` [n, context] cut into
    windows of `window` tokens after BOS, with the latent's activation on each token. `acts` [n, context, d]
    are the coder's inputs on `blocks` (hook_activations)."""
    latents = coder.to(lm.device).encode(acts.flatten(0, 1)).unflatten(0, acts.shape[:2])[:, 1:, indices].float().cpu()
    ids = blocks[:, 1:]  # [n, context - 1]; latents [n, context - 1, len(indices)]
    samples: dict[int, tuple[list[Sample], list[Sample]]] = {index: ([], []) for index in indices}
    for b in range(ids.shape[0]):
        for start in range(0, ids.shape[1] - window + 1, window):
            tokens = lm.token_strings(ids[b, start : start + window].tolist())
            for column, index in enumerate(indices):
                values = latents[b, start : start + window, column].tolist()
                samples[index][0 if any(v > 0 for v in values) else 1].append(Sample(tokens, values))
    return samples


class ChatScorer:
    """delphi's scorer prompts, answered yes or no by a chat model (a feature's contexts in one batch)."""

    def __init__(self, model: ChatModel) -> None:
        self.model, self.name = model, model.name

    def _yes(self, prompts: list[str]) -> list[bool]:
        return [answer.strip().lower().startswith("yes") for answer in self.model.reply(prompts, 3)]

    def detect(self, explanation: str, contexts: list[list[str]]) -> list[bool]:
        return self._yes(
            [
                f"A feature of a language model is described as: {explanation}\n"
                f"Text: {''.join(tokens)}\nDoes the feature fire anywhere in this text? Answer yes or no."
                for tokens in contexts
            ]
        )

    def fuzz(self, explanation: str, contexts: list[list[str]], marks: list[list[bool]]) -> list[bool]:
        return self._yes(
            [
                f"A feature of a language model is described as: {explanation}\n"
                f"Text with some tokens marked <<like this>>: {_marked(Sample(tokens, [float(m) for m in marked]))}\n"
                "Are the marked tokens the ones this feature fires on? Answer yes or no."
                for tokens, marked in zip(contexts, marks, strict=True)
            ]
        )


class HeldOut(NamedTuple):
    """The eval split scores are judged on: its blocks and the subject model's activations on them."""

    blocks: torch.Tensor
    """[n, context] token ids."""
    acts: torch.Tensor
    """[n, context, d] activations at the dictionary's input hook."""
    window: int
    """Tokens per context the scorer judges (blocks are cut into such windows after BOS)."""


def held_out(lm: LoadedModel, corpus: TokenizedCorpus, hook: str, window: int = 16) -> HeldOut:
    """The corpus's eval split with its activations at `hook`, or one error when there is none."""
    blocks = corpus.split("eval")
    if blocks.shape[0] == 0:
        raise CircuitDBError("the corpus has no eval split to score explanations on (corpus.eval_fraction)")
    return HeldOut(blocks, hook_activations(lm, hook, blocks), min(window, blocks.shape[1] - 1))


def score_rows(
    lm: LoadedModel,
    coder: SparseCoder,
    data: HeldOut,
    scorer: ChatScorer,
    explanations: pl.DataFrame,
    per_side: int = 10,
    seed: int = 0,
) -> pl.DataFrame:
    """`explanation_scores` rows: detection and fuzzing of each explanation of one dictionary's latents on
    held-out windows (at most `per_side` firing and as many silent ones)."""
    indices = explanations["index"].to_list()
    samples = held_out_samples(lm, coder, data.acts, data.blocks, indices, data.window)
    rows = []
    judged = tqdm(explanations.iter_rows(named=True), total=len(indices), desc="score", unit="feature", leave=False)
    for row, index in zip(judged, indices, strict=True):
        active, silent = (side[:per_side] for side in samples[index])
        results: dict[str, Score] = {}
        if active and silent:
            results["detection"] = detection(row["explanation"], active, silent, scorer, seed)
        if any(not all(v > 0 for v in s.activations) for s in active):
            results["fuzzing"] = fuzzing(row["explanation"], active, scorer, seed)
        for method, result in results.items():
            rows.append(
                {
                    **{k: row[k] for k in ("feature_id", "dictionary", "layer", "explainer")},
                    "scorer": scorer.name,
                    "method": method,
                    **result._asdict(),
                    "seed": seed,
                    "created_at": datetime.now(UTC),
                }
            )
    return pl.DataFrame(rows, schema=_SCORE_SCHEMA)


def explanation_summary(scores: pl.DataFrame) -> dict[str, float | int | None]:
    """The columns of store/schemas.py's EXPLANATION_SUMMARY from `explanation_scores` rows: how many
    features were scored, and their mean accuracy per method."""
    mean = {method: scores.filter(pl.col("method") == method)["accuracy"].mean() for method in ("detection", "fuzzing")}
    counted = scores["feature_id"].n_unique() or None  # the mean of no rows is None too
    return {"explained_features": counted, "detection_acc": mean["detection"], "fuzzing_acc": mean["fuzzing"]}


def summarize_in_dictionaries(store: Store, dictionary: str, layer: int, explainer: str, scorer: str) -> None:
    """Write the layer's explanation summary by this explainer and scorer (every feature they scored there,
    not only this call's) into its `dictionaries` row."""
    partition = layer_partition(dictionary, layer)
    if not store.fetch(store.table_file("dictionaries", partition)):
        return  # a cross-layer set: one partition for all layers, explained per layer elsewhere
    stored = read_table(store, "explanation_scores", partitions=[partition])
    pair = stored.filter((pl.col("explainer") == explainer) & (pl.col("scorer") == scorer))
    summary = explanation_summary(pair) | {"scored_by": f"{explainer} → {scorer}"}
    row = read_table(store, "dictionaries", partitions=[partition])
    write_partition(store, "dictionaries", partition, row.with_columns(pl.lit(v).alias(k) for k, v in summary.items()))


def score_explanations(
    store: Store,
    lm: LoadedModel,
    corpus: TokenizedCorpus,
    scorer: ChatScorer,
    explanations: pl.DataFrame,
    window: int = 16,
    **options,
) -> pl.DataFrame:
    """Score each of `explanations` (on windows of `window` tokens; score_rows' `options`) with its stored
    dictionary; rows stored in `explanation_scores`, each layer's summary in its `dictionaries` row."""
    parts = []
    for (dictionary, layer), part in explanations.group_by("dictionary", "layer"):
        coder, meta = stored_dictionary(store, dictionary, layer)
        data = held_out(lm, corpus, meta["input_hook"], window)
        parts.append(score_rows(lm, coder, data, scorer, part, **options))
    scores = pl.concat(parts) if parts else pl.DataFrame(schema=_SCORE_SCHEMA)
    if scores.height:
        _merge(store, "explanation_scores", scores, ["feature_id", "explainer", "scorer", "method"])
        for dictionary, layer, explainer in scores.select("dictionary", "layer", "explainer").unique().rows():
            summarize_in_dictionaries(store, dictionary, layer, explainer, scorer.name)
    return scores


def _densest(features: pl.DataFrame, n: int) -> list[str]:
    return features.filter(~pl.col("dead")).sort("density", descending=True)["feature_id"].head(n).to_list()


def densest_live(store: Store, dictionary: str, layer: int, n: int) -> list[str]:
    """The `n` live features of highest density of one layer: what is explained when no ids are given."""
    features = read_table(store, "features", ["feature_id", "density", "dead"], [layer_partition(dictionary, layer)])
    return _densest(features, n)


def explain_and_score(
    store: Store, chat: ChatModel, feature_ids: list[str], scoring: tuple[LoadedModel, TokenizedCorpus] | None
) -> tuple[pl.DataFrame, pl.DataFrame | None]:
    """Explain `feature_ids`, then (with the subject model and corpus in `scoring`) score the explanations
    with the explainer as scorer."""
    explanations = explain_features(store, chat, feature_ids)
    if scoring is None:
        return explanations, None
    lm, corpus = scoring
    return explanations, score_explanations(store, lm, corpus, ChatScorer(chat), explanations)


def explain_and_score_coder(
    chat: ChatModel,
    lm: LoadedModel,
    coder: SparseCoder,
    train: tuple[ActivationSource, torch.Tensor],
    data: HeldOut,
    n: int,
    name: tuple[str, int],
) -> dict[str, float | int | None]:
    """The explanation summary of a dictionary that is not stored (a sweep point): statistics of all its
    latents over the train split (`train`: its activation source and blocks), its `n` densest live latents
    explained by `chat` and scored by it on `data`. Nothing is written. `name`: (dictionary, layer) ids."""
    features, exemplars = feature_statistics(coder, *train, lm, *name, FeatureStatsConfig())
    chosen = _densest(features, n)
    picked = pl.col("feature_id").is_in(chosen)
    explanations = explanation_rows(chat, features.filter(picked), shown_windows(exemplars.filter(picked)))
    return explanation_summary(score_rows(lm, coder, data, ChatScorer(chat), explanations))

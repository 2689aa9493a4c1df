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

import polars as pl
import torch

from circuitdb.corpus import TokenizedCorpus
from circuitdb.dictionaries.sparse_coder import SparseCoder
from circuitdb.dictionaries.stored import stored_dictionary
from circuitdb.errors import CircuitDBError
from circuitdb.explanations.chat import ChatModel
from circuitdb.explanations.scoring import Sample, Score, detection, fuzzing
from circuitdb.models import LoadedModel, capture, resolve_hooks
from circuitdb.store import Store, layer_partition, parse_feature_id, read_table, write_partition

PROMPT_VERSION = "v1"
"""Changes whenever the explanation prompt does: explanations record it."""
TOP_SHOWN, MAX_NEW_TOKENS = 8, 40


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


def _shown_windows(store: Store, feature_ids: list[str]) -> dict[str, list[Sample]]:
    """Per feature: its top exemplar windows, then one window per quantile group, best first."""
    columns = ["feature_id", "kind", "group", "rank", "tokens", "values"]
    exemplars = read_table(store, "exemplars", columns, _partitions(feature_ids)).filter(
        pl.col("feature_id").is_in(feature_ids)
    )
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


def explain_features(store: Store, explainer: ChatModel, feature_ids: list[str]) -> pl.DataFrame:
    """Explain each feature from its stored exemplars and top logits; rows stored in `explanations`."""
    columns = ["feature_id", "dictionary", "layer", "index", "top_logits"]
    features = read_table(store, "features", columns, _partitions(feature_ids)).filter(
        pl.col("feature_id").is_in(feature_ids)
    )
    unknown = sorted(set(feature_ids) - set(features["feature_id"]))
    if unknown:
        raise CircuitDBError(f"no statistics for {', '.join(unknown[:5])}; build the feature statistics first")
    shown = _shown_windows(store, feature_ids)
    silent = [fid for fid in feature_ids if not shown.get(fid)]
    if silent:
        raise CircuitDBError(f"{', '.join(silent[:5])} never fired on the corpus: nothing to explain")
    features = features.sort("feature_id")
    prompts = [explanation_prompt(shown[r["feature_id"]], r["top_logits"]) for r in features.iter_rows(named=True)]
    answers = explainer.reply(prompts, MAX_NEW_TOKENS)
    rows = features.drop("top_logits").with_columns(
        explanation=pl.Series([_one_line(a) for a in answers], dtype=pl.String),
        explainer=pl.lit(explainer.name),
        prompt_version=pl.lit(PROMPT_VERSION),
        created_at=pl.lit(datetime.now(UTC)),
    )
    _merge(store, "explanations", rows, ["feature_id", "explainer"])
    return rows


@torch.no_grad()
def held_out_samples(
    lm: LoadedModel, coder: SparseCoder, hook: str, blocks: torch.Tensor, indices: list[int], window: int
) -> dict[int, tuple[list[Sample], list[Sample]]]:
    """Per latent: (windows where it fires, windows where it is silent) among `blocks` [n, context] cut into
    windows of `window` tokens after BOS, with the latent's activation on each token."""
    hooked = resolve_hooks(lm, [hook])
    acts = torch.cat([capture(lm, blocks[i : i + 8].long(), hooked)[hook] for i in range(0, len(blocks), 8)])
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
    """delphi's scorer prompts, answered yes or no by a chat model."""

    def __init__(self, model: ChatModel) -> None:
        self.model, self.name = model, model.name

    def _yes(self, prompt: str) -> bool:
        return self.model.reply([prompt], 3)[0].strip().lower().startswith("yes")

    def detect(self, explanation: str, tokens: list[str]) -> bool:
        return self._yes(
            f"A feature of a language model is described as: {explanation}\n"
            f"Text: {''.join(tokens)}\nDoes the feature fire anywhere in this text? Answer yes or no."
        )

    def fuzz(self, explanation: str, tokens: list[str], marked: list[bool]) -> bool:
        text = _marked(Sample(tokens, [float(m) for m in marked]))
        return self._yes(
            f"A feature of a language model is described as: {explanation}\n"
            f"Text with some tokens marked <<like this>>: {text}\n"
            "Are the marked tokens the ones this feature fires on? Answer yes or no."
        )


def score_explanations(
    store: Store,
    lm: LoadedModel,
    corpus: TokenizedCorpus,
    scorer: ChatScorer,
    explanations: pl.DataFrame,
    per_side: int = 10,
    window: int = 16,
    seed: int = 0,
) -> pl.DataFrame:
    """Detection and fuzzing of each explanation on held-out windows (at most `per_side` firing and as many
    silent ones); rows stored in `explanation_scores`."""
    blocks = corpus.split("eval")
    if blocks.shape[0] == 0:
        raise CircuitDBError("the corpus has no eval split to score explanations on (corpus.eval_fraction)")
    rows = []
    for (dictionary, layer), part in explanations.group_by("dictionary", "layer"):
        coder, meta = stored_dictionary(store, dictionary, layer)
        indices = [parse_feature_id(fid)[2] for fid in part["feature_id"]]
        samples = held_out_samples(lm, coder, meta["input_hook"], blocks, indices, window)
        for row, index in zip(part.iter_rows(named=True), indices, strict=True):
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
    scores = pl.DataFrame(rows, schema_overrides={"layer": pl.Int32})
    if scores.height:
        _merge(store, "explanation_scores", scores, ["feature_id", "explainer", "scorer", "method"])
    return scores


def densest_live(store: Store, dictionary: str, layer: int, n: int) -> list[str]:
    """The `n` live features of highest density of one layer: what is explained when no ids are given."""
    features = read_table(store, "features", ["feature_id", "dictionary", "layer", "density", "dead"])
    chosen = features.filter((pl.col("dictionary") == dictionary) & (pl.col("layer") == layer) & ~pl.col("dead"))
    return chosen.sort("density", descending=True)["feature_id"].head(n).to_list()


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

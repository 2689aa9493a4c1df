"""Scoring an explanation of a feature, as EleutherAI's delphi does, with any scorer (an LLM, or a rule).

- Detection: the scorer reads the explanation and a context and says whether the feature fires anywhere
  in it; contexts are half activating (the feature's held-out exemplars) and half not (windows where it is
  silent), so chance is 0.5.
- Fuzzing: the scorer reads the explanation and an activating context with some tokens marked and says
  whether the marks are the feature's tokens; half the contexts mark exactly the active tokens, half mark
  as many tokens where it is silent.
Both report accuracy, precision, recall and F1 against the truth. Sampling is seeded, so a score is
reproducible.
"""

from __future__ import annotations

import random
from typing import NamedTuple, Protocol


class Sample(NamedTuple):
    tokens: list[str]
    """A context, token by token."""
    activations: list[float]
    """The feature's activation on each token (all zero when it is silent there)."""


class Scorer(Protocol):
    """Judges contexts against one explanation, all of a feature's at once (an LLM scorer batches them)."""

    def detect(self, explanation: str, contexts: list[list[str]]) -> list[bool]:
        """Per context (its tokens): whether the feature the explanation describes fires somewhere in it."""
        ...

    def fuzz(self, explanation: str, contexts: list[list[str]], marks: list[list[bool]]) -> list[bool]:
        """Per context: whether its marked tokens are the ones the feature the explanation describes fires on."""
        ...


class Score(NamedTuple):
    accuracy: float
    precision: float
    recall: float
    f1: float
    n: int
    """Contexts judged."""


def score(truth: list[bool], predicted: list[bool]) -> Score:
    """Accuracy, precision, recall and F1 of `predicted` against `truth` (0 where undefined)."""
    if len(truth) != len(predicted) or not truth:
        raise ValueError("truth and predictions must be non-empty and of one length")
    hits = sum(t and p for t, p in zip(truth, predicted, strict=True))
    said = sum(predicted)
    real = sum(truth)
    precision = hits / said if said else 0.0
    recall = hits / real if real else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    correct = sum(t == p for t, p in zip(truth, predicted, strict=True))
    return Score(correct / len(truth), precision, recall, f1, len(truth))


def detection(explanation: str, active: list[Sample], silent: list[Sample], scorer: Scorer, seed: int = 0) -> Score:
    """Detection over a balanced draw: as many silent contexts as active ones (the fewer of the two), in a
    seeded random order."""
    n = min(len(active), len(silent))
    rng = random.Random(seed)
    contexts = [(s, True) for s in rng.sample(active, n)] + [(s, False) for s in rng.sample(silent, n)]
    rng.shuffle(contexts)
    predicted = scorer.detect(explanation, [sample.tokens for sample, _ in contexts])
    return score([truth for _, truth in contexts], predicted)


def fuzzing(explanation: str, active: list[Sample], scorer: Scorer, seed: int = 0) -> Score:
    """Fuzzing: every other active context (in a seeded order) has its marks moved to as many tokens where
    the feature is silent; contexts the feature covers entirely are left out (no wrong marks exist)."""
    rng = random.Random(seed)
    usable = [s for s in active if any(a > 0 for a in s.activations) and not all(a > 0 for a in s.activations)]
    rng.shuffle(usable)
    truth, marks = [], []
    for i, sample in enumerate(usable):
        marked = [a > 0 for a in sample.activations]
        right = i % 2 == 0
        if not right:
            silent = [j for j, mark in enumerate(marked) if not mark]
            moved = set(rng.sample(silent, min(sum(marked), len(silent))))
            marked = [j in moved for j in range(len(marked))]
        truth.append(right)
        marks.append(marked)
    return score(truth, scorer.fuzz(explanation, [sample.tokens for sample in usable], marks))


class TokenRule:
    """A scorer that reads explanations of the form `the token "X"` literally: detection says yes when X
    is in the context, fuzzing when exactly the X tokens are marked. It stands in for an LLM scorer where
    the arithmetic, not the reading, is under test."""

    @staticmethod
    def _token(explanation: str) -> str:
        return explanation.split('"')[1]

    def detect(self, explanation: str, contexts: list[list[str]]) -> list[bool]:
        return [self._token(explanation) in tokens for tokens in contexts]

    def fuzz(self, explanation: str, contexts: list[list[str]], marks: list[list[bool]]) -> list[bool]:
        token = self._token(explanation)
        return [[t == token for t in tokens] == marked for tokens, marked in zip(contexts, marks, strict=True)]

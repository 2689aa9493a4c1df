"""Explanation scores: a planted feature (a latent that fires exactly on one token) scores 1.0 with the
right explanation and at chance with a shuffled one, read by a rule-based stand-in for the scorer."""

from __future__ import annotations

import random

import pytest

from circuitdb.explanations.scoring import Sample, TokenRule, detection, fuzzing, score

WORDS = ["the", "quick", "brown", "jumps", "over", "lazy", "dog", "and", "runs"]


def _contexts(seed: int, n: int = 400, width: int = 12) -> tuple[list[Sample], list[Sample]]:
    """Random contexts, about half with a 'fox' (5.6% of tokens); the planted feature fires (2.5) on every
    'fox' and nowhere else."""
    rng = random.Random(seed)
    active, silent = [], []
    for _ in range(n):
        tokens = ["fox" if rng.random() < 0.056 else rng.choice(WORDS) for _ in range(width)]
        activations = [2.5 if t == "fox" else 0.0 for t in tokens]
        (active if any(activations) else silent).append(Sample(tokens, activations))
    return active, silent


def test_the_right_explanation_scores_one() -> None:
    active, silent = _contexts(0)
    found = detection('the token "fox"', active, silent, TokenRule(), seed=1)
    assert found.n == 2 * min(len(active), len(silent)) and found.n > 100
    assert found.accuracy == found.f1 == 1.0
    fuzzed = fuzzing('the token "fox"', active, TokenRule(), seed=1)
    assert fuzzed.accuracy == fuzzed.f1 == 1.0 and fuzzed.n > 100


def test_a_shuffled_explanation_scores_at_chance() -> None:
    """'jumps' appears independently of 'fox': detection is a coin flip, fuzzing always says 'wrong marks'."""
    active, silent = _contexts(0)
    found = detection('the token "jumps"', active, silent, TokenRule(), seed=1)
    assert found.accuracy == pytest.approx(0.5, abs=0.08)
    fuzzed = fuzzing('the token "jumps"', active, TokenRule(), seed=1)
    assert fuzzed.accuracy == pytest.approx(0.5, abs=0.05) and fuzzed.recall == 0.0


def test_the_arithmetic_by_hand() -> None:
    truth = [True, True, True, False, False, False, False, False]
    predicted = [True, True, False, True, False, False, False, False]
    found = score(truth, predicted)  # TP 2, FP 1, FN 1, TN 4
    assert found.accuracy == 6 / 8 and found.precision == 2 / 3 and found.recall == 2 / 3
    assert found.f1 == pytest.approx(2 / 3) and found.n == 8
    assert score([False, False], [False, False]).f1 == 0.0
    with pytest.raises(ValueError):
        score([True], [])

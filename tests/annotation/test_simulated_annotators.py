"""Simulated annotators (rlhf.simulated_annotators): over many draws, each flip rate and bias comes out as set."""

from __future__ import annotations

import numpy as np
import pytest

from rlhf.simulated_annotators import AnnotatorPool, SimulatedAnnotator

pytestmark = pytest.mark.timeout(60)
DRAWS = 200_000
# Three standard errors of a share near 0.5 over DRAWS draws: about 0.0034.
TOLERANCE = 3 * np.sqrt(0.25 / DRAWS)


def answers(annotator: SimulatedAnnotator, a_is_better: np.ndarray, a_is_longer: np.ndarray, seed: int = 0):
    return AnnotatorPool((annotator,), seed=seed).answer(a_is_better, a_is_longer)


def test_a_flip_rate_is_the_share_of_answers_against_the_known_label():
    truth = np.random.default_rng(1).random(DRAWS) < 0.5
    got = answers(SimulatedAnnotator("noisy", flip_rate=0.2), truth, np.zeros(DRAWS, bool))
    assert np.mean(got.prefers_a != truth) == pytest.approx(0.2, abs=TOLERANCE)
    perfect = answers(SimulatedAnnotator("perfect"), truth, np.zeros(DRAWS, bool))
    assert np.array_equal(perfect.prefers_a, truth)


def test_position_bias_takes_the_first_shown_that_often_beyond_the_label():
    truth = np.zeros(DRAWS, bool)  # b is always better, so only the bias picks a
    got = answers(SimulatedAnnotator("hurried", position_bias=0.3), truth, np.zeros(DRAWS, bool))
    assert np.mean(got.a_shown_first) == pytest.approx(0.5, abs=TOLERANCE)  # the pool shuffles the order
    # An answer for the first-shown response, beyond what the label gives it: P(first) = b + (1 - b) P(label first).
    first_chosen = got.prefers_a == got.a_shown_first
    assert np.mean(first_chosen) == pytest.approx(0.3 + 0.7 * 0.5, abs=TOLERANCE)
    assert np.mean(got.prefers_a[~got.a_shown_first]) == pytest.approx(0.0)  # a shown second: never by position


def test_length_bias_takes_the_longer_that_often_against_the_label():
    truth = np.zeros(DRAWS, bool)
    a_longer = np.ones(DRAWS, bool)  # the longer one is always the worse one
    got = answers(SimulatedAnnotator("wordy", length_bias=0.25), truth, a_longer)
    assert np.mean(got.prefers_a) == pytest.approx(0.25, abs=TOLERANCE)


def test_a_pool_spreads_the_pairs_over_its_annotators_and_is_seeded():
    pool = (SimulatedAnnotator("careful"), SimulatedAnnotator("noisy", flip_rate=0.5))
    truth = np.ones(DRAWS, bool)
    got = AnnotatorPool(pool, seed=3).answer(truth, truth)
    assert np.bincount(got.annotator) / DRAWS == pytest.approx([0.5, 0.5], abs=TOLERANCE)
    assert np.mean(got.prefers_a[got.annotator == 1]) == pytest.approx(0.5, abs=2 * TOLERANCE)
    assert got.prefers_a[got.annotator == 0].all()
    again = AnnotatorPool(pool, seed=3).answer(truth, truth)
    assert np.array_equal(got.prefers_a, again.prefers_a)

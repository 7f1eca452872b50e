"""Simulated annotators: a pool that answers pairwise questions from known labels, with noise and bias.

After AlpacaFarm (Dubois et al., 2023, "AlpacaFarm: A Simulation Framework for Methods that Learn
from Human Feedback", sec. 3), which simulates people as a pool of annotators, each with its own
noise (a share of labels flipped at random) and biases, so a round of preference collection runs
without people. Where it departs: AlpacaFarm's annotators are prompted LLMs whose biases come with
them; ours answer from a known preference (a dataset's human label, or the demo's rule judge) and
their noise and biases are parameters, so a bench knows exactly what it fed the reward model.

Each answer, for an annotator with position bias b_pos, length bias b_len and flip rate f:
    with probability b_pos: the response shown first, whatever it says;
    else with probability b_len: the longer response;
    else: the known preference, flipped with probability f.
The pool shows each pair in a random order and gives it to an annotator drawn uniformly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SimulatedAnnotator:
    name: str
    flip_rate: float = 0.0
    """Of the answers that follow the known preference, the share flipped (label noise)."""
    position_bias: float = 0.0
    """The share of answers that take the response shown first, whatever it says."""
    length_bias: float = 0.0
    """Of the answers not decided by position, the share that take the longer response."""


# A pool like AlpacaFarm's in spirit: mostly careful people, one noisy, one hurried (position), one
# swayed by length. Not fitted to anything: the bench states it beside its figures.
DEFAULT_POOL = (
    SimulatedAnnotator("careful", flip_rate=0.05),
    SimulatedAnnotator("noisy", flip_rate=0.25),
    SimulatedAnnotator("hurried", flip_rate=0.1, position_bias=0.2),
    SimulatedAnnotator("wordy", flip_rate=0.1, length_bias=0.2),
)


@dataclass(frozen=True)
class Answers:
    prefers_a: np.ndarray  # (N,) bool: the annotator chose response a
    annotator: np.ndarray  # (N,) int: index into the pool
    a_shown_first: np.ndarray  # (N,) bool


class AnnotatorPool:
    """Answers pairs (a, b) from the known preference, as its annotators would."""

    def __init__(self, annotators: tuple[SimulatedAnnotator, ...] = DEFAULT_POOL, seed: int = 0):
        self.annotators = annotators
        self.rng = np.random.default_rng(seed)

    def answer(self, a_is_better: np.ndarray, a_is_longer: np.ndarray) -> Answers:
        """One answer per pair, from the known preference `a_is_better` and which response is longer.  (N,)"""
        a_is_better, a_is_longer = np.asarray(a_is_better, bool), np.asarray(a_is_longer, bool)
        n = len(a_is_better)
        who = self.rng.integers(len(self.annotators), size=n)
        flip, position, length = (
            np.array([getattr(x, f) for x in self.annotators])[who]
            for f in ("flip_rate", "position_bias", "length_bias")
        )
        a_first = self.rng.random(n) < 0.5
        u_position, u_length, u_flip = self.rng.random((3, n))
        prefers = np.where(u_flip < flip, ~a_is_better, a_is_better)
        prefers = np.where(u_length < length, a_is_longer, prefers)
        prefers = np.where(u_position < position, a_first, prefers)
        return Answers(prefers_a=prefers, annotator=who, a_shown_first=a_first)

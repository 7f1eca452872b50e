"""What every judge returns: a ranking of a prompt's K responses, ties allowed, with pair confidences."""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations
from typing import Protocol


@dataclass(frozen=True)
class Judgement:
    """One prompt's verdict. rank 1 is best; equal ranks are ties."""

    ranks: list[int]  # (K,)
    scores: list[float]  # (K,) the judge's score; higher is better
    reasons: list[dict]  # (K,) why each response got its score
    # P(response i is better than response j) for each pair i < j, where the judge measures it.
    preferences: dict[tuple[int, int], float] = field(default_factory=dict)

    def confidence(self, i: int, j: int) -> float:
        """How sure the judge is of the order of responses i and j: 0 (a coin flip) to 1 (certain)."""
        if (i, j) in self.preferences:
            return abs(2.0 * self.preferences[(i, j)] - 1.0)
        if (j, i) in self.preferences:
            return abs(2.0 * self.preferences[(j, i)] - 1.0)
        return 1.0  # a judge that scores each response on its own is as sure as its scores


class Judge(Protocol):
    name: str
    version: str

    def rank_batch(self, items: list[tuple[list[dict], str | None, list[str]]]) -> list[Judgement]:
        """Rank each (prompt conversation, topic, K responses) item; the conversation is chat
        messages (rlhf.chat), a one-turn prompt included."""


def ranks_from_scores(scores: list[float]) -> list[int]:
    """Competition ranking ("1224"): equal scores share a rank, rank 1 is the highest score."""
    return [1 + sum(other > score for other in scores) for score in scores]


def judgement_from_preferences(k: int, preferences: dict[tuple[int, int], float], reasons: list[dict]) -> Judgement:
    """A K-way ranking from the C(K,2) pairwise preferences: each response scores its mean
    probability of beating the others (a Borda count with soft wins); equal scores tie."""
    wins = [0.0] * k
    for (i, j), p in preferences.items():
        wins[i] += p
        wins[j] += 1.0 - p
    scores = [round(w / max(k - 1, 1), 6) for w in wins]  # rounding: near-equal soft scores are ties
    return Judgement(ranks_from_scores(scores), scores, reasons, dict(preferences))


def all_pairs(k: int) -> list[tuple[int, int]]:
    return list(combinations(range(k), 2))

"""What every judge returns: a ranking of a prompt's K responses, ties allowed."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Judgement:
    """One prompt's verdict. rank 1 is best; equal ranks are ties."""

    ranks: list[int]  # (K,)
    scores: list[float]  # (K,) the judge's score; higher is better
    reasons: list[dict]  # (K,) why each response got its score


def ranks_from_scores(scores: list[float]) -> list[int]:
    """Competition ranking ("1224"): equal scores share a rank, rank 1 is the highest score."""
    return [1 + sum(other > score for other in scores) for score in scores]

"""Agreement between judges on the pairs they both labelled: AI vs people, and person vs person.

A pair's label is +1 (the response with the smaller id is better), -1 (the other), or 0 (a tie).
Accuracy is the share of equal labels; Cohen's kappa corrects it for the agreement that the two
raters' label frequencies alone would give (Cohen 1960): (p_o - p_e) / (1 - p_e).
"""

from __future__ import annotations

from collections import Counter

import pandas as pd

HUMAN = "human"


def cohen_kappa(first: list[int], second: list[int]) -> float:
    n = len(first)
    if n == 0:
        return float("nan")
    observed = sum(a == b for a, b in zip(first, second)) / n
    counts_first, counts_second = Counter(first), Counter(second)
    expected = sum(counts_first[k] * counts_second[k] for k in counts_first) / n**2
    return 1.0 if expected == 1.0 else (observed - expected) / (1.0 - expected)


def _agreement(merged: pd.DataFrame) -> dict:
    first, second = list(merged["label_x"]), list(merged["label_y"])
    return {
        "pairs": len(merged),
        "accuracy": round(sum(a == b for a, b in zip(first, second)) / len(merged), 4) if len(merged) else None,
        "kappa": round(cohen_kappa(first, second), 4) if len(merged) else None,
    }


def agreement_report(labels: pd.DataFrame) -> dict:
    """From the store's pair labels (a, b, judge, judge_version, label): AI-vs-human agreement per AI
    judge, and inter-annotator agreement over every two people who labelled the same pair."""
    human = labels[labels["judge"] == HUMAN]
    report: dict = {"ai_vs_human": {}, "inter_annotator": None}
    for judge, ai in labels[labels["judge"] != HUMAN].groupby("judge", sort=True):
        merged = ai.merge(human, on=["a", "b"])
        if len(merged):
            report["ai_vs_human"][judge] = _agreement(merged)
    people = human.merge(human, on=["a", "b"])
    people = people[people["judge_version_x"] < people["judge_version_y"]]
    if len(people):
        report["inter_annotator"] = _agreement(people)
    return report

"""Evaluation measures against hand-computed values."""

import math

import pandas as pd

from rlhf.evaluation import baseline_accuracies, distinct_n, rouge_l, win_rate


def test_rouge_l_from_longest_common_subsequence():
    # LCS of "a b c d" and "a c d e" is "a c d": P = R = 3/4, F = 3/4.
    assert math.isclose(rouge_l("a b c d", "a c d e"), 0.75)
    assert rouge_l("x y", "a b") == 0.0
    assert rouge_l("Same Words", "same words") == 1.0


def test_distinct_2_exposes_repetition():
    assert distinct_n(["a b c", "a b c"]) == 0.5  # 2 unique bigrams out of 4
    assert distinct_n(["a b c", "d e f"]) == 1.0


def test_win_rate_counts_ties_half():
    assert win_rate([2, 1, 3, 0], [1, 1, 4, 0]) == (1 + 0.5 + 0 + 0.5) / 4


def test_baselines_prefer_overlap_with_prompt_and_length():
    pairs = pd.DataFrame(
        {
            "prompt": ["tell me about owls", "tell me about owls"],
            "chosen": ["owls are wise", "short"],
            "rejected": ["cats sleep a lot every day", "a much longer answer here"],
        }
    )
    assert baseline_accuracies(pairs) == {"rouge_baseline_accuracy": 0.75, "length_baseline_accuracy": 0.0}

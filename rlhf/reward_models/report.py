"""How good a reward model is on held-out pairs: accuracy, calibration, by label source and margin.

Calibration reads sigmoid(r_chosen - r_rejected) as the model's probability that the chosen
response is better (the Bradley-Terry reading the loss trains), and reports the expected
calibration error over equal-width probability bins (Guo et al., 2017): the bin-size-weighted gap
between the mean predicted probability and the share of pairs it got right, both taken for the
response the model prefers.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

MARGIN_BUCKETS = [(0.0, 1.0), (1.0, 2.0), (2.0, float("inf"))]  # the judge's score gap


def expected_calibration_error(probability_chosen: np.ndarray, bins: int = 10) -> float:
    """ECE of P(chosen better) over pairs whose true label is "chosen"."""
    if len(probability_chosen) == 0:
        return float("nan")
    confidence = np.maximum(probability_chosen, 1 - probability_chosen)  # of the response it prefers
    correct = (probability_chosen > 0.5).astype(float) + 0.5 * (probability_chosen == 0.5)
    edges = np.linspace(0.5, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    error = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            error += members.mean() * abs(confidence[members].mean() - correct[members].mean())
    return float(error)


def accuracy(margins: np.ndarray) -> float:
    """Share of pairs ordered as labelled; a zero margin counts half."""
    if len(margins) == 0:
        return float("nan")
    return float(((margins > 0) + 0.5 * (margins == 0)).mean())


def reward_report(pairs: pd.DataFrame, chosen: np.ndarray, rejected: np.ndarray) -> dict:
    """Metrics of rewards `chosen`/`rejected` (N,) on the strict held-out `pairs` (judge, margin columns)."""
    margins = chosen - rejected
    report = {
        "test_pairs": len(pairs),
        "test_accuracy": round(accuracy(margins), 4),
        "test_ece": round(expected_calibration_error(1 / (1 + np.exp(-margins))), 4),
    }
    for judge in sorted(pairs["judge"].unique()):
        members = (pairs["judge"] == judge).to_numpy()
        report[f"accuracy_{judge}"] = round(accuracy(margins[members]), 4)
    label_margin = pairs["margin"].abs().to_numpy()
    for low, high in MARGIN_BUCKETS:
        members = (label_margin >= low) & (label_margin < high)
        name = f"accuracy_margin_{low:g}_{'up' if high == float('inf') else f'{high:g}'}"
        report[name] = round(accuracy(margins[members]), 4) if members.any() else None
    return report


def render_reward_distribution(chosen: np.ndarray, rejected: np.ndarray, path: str | Path) -> None:
    """Histograms of held-out rewards of chosen and rejected responses, and of their margins, as PNG."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    bins = np.linspace(min(chosen.min(), rejected.min()), max(chosen.max(), rejected.max()), 30)
    left.hist(chosen, bins=bins, alpha=0.6, label="chosen")
    left.hist(rejected, bins=bins, alpha=0.6, label="rejected")
    left.set_title("reward on held-out pairs")
    left.legend()
    right.hist(chosen - rejected, bins=30, color="gray")
    right.axvline(0, color="black", linewidth=0.8)
    right.set_title("r(chosen) - r(rejected)")
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=80)
    plt.close(figure)

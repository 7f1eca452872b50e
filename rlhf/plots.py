"""Training curves rendered to PNG, beside the CSV that `dvc plots` reads."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: stages run headless
import matplotlib.pyplot as plt
import pandas as pd


def render_curve(history: pd.DataFrame, columns: list[str], path: str | Path, x: str = "iteration") -> None:
    """One small panel per column against `x`, in a grid, written as PNG."""
    columns = [c for c in columns if c in history]
    rows = (len(columns) + 3) // 4
    figure, axes = plt.subplots(rows, 4, figsize=(14, 3 * rows), squeeze=False)
    for axis, column in zip(axes.flat, columns):
        points = history[[x, column]].dropna()  # a column logged every N iterations (eval_win_rate) is empty between
        axis.plot(points[x], points[column], marker=".", linewidth=1)
        axis.set_title(column)
        axis.set_xlabel(x)
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(columns) :]:
        axis.axis("off")
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=80)
    plt.close(figure)


def render_gold_vs_proxy(history: pd.DataFrame, path: str | Path) -> None:
    """The gold score (the rules) and the reward model's proxy score against sqrt(KL) to the start,
    as Gao et al. (2022) plot reward over-optimisation: where the proxy keeps rising and the gold
    flattens or falls, the policy is gaming the reward model. Two y axes: their scales differ."""
    figure, gold_axis = plt.subplots(figsize=(6, 4))
    if "gold_score" not in history:  # DPO, or gold_judge: null: the out still exists, saying why it is empty
        gold_axis.text(
            0.5,
            0.5,
            "no gold score: train_policy.gold_judge is null, or the policy came from DPO",
            ha="center",
            va="center",
            wrap=True,
        )
        gold_axis.axis("off")
        figure.savefig(path, format="png", dpi=80)
        plt.close(figure)
        return
    proxy_axis = gold_axis.twinx()
    gold_axis.plot(history["sqrt_kl"], history["gold_score"], marker=".", color="tab:green", label="gold (rules)")
    proxy_axis.plot(
        history["sqrt_kl"], history["raw_score"], marker=".", color="tab:blue", label="proxy (reward model)"
    )
    gold_axis.set_xlabel("sqrt(KL to the start policy), sqrt(nats)")
    gold_axis.set_ylabel("gold score", color="tab:green")
    proxy_axis.set_ylabel("proxy score", color="tab:blue")
    gold_axis.grid(alpha=0.3)
    figure.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=80)
    plt.close(figure)

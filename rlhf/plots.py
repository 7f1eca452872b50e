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
        axis.plot(history[x], history[column], marker=".", linewidth=1)
        axis.set_title(column)
        axis.set_xlabel(x)
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(columns) :]:
        axis.axis("off")
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=80)
    plt.close(figure)

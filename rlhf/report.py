"""The evaluation report: metrics and sample responses before and after, as markdown."""

from __future__ import annotations

import html


def _cell(text: str) -> str:
    # Model text is shown as text: escape HTML and the table's own separator.
    return html.escape(text).replace("|", "\\|").replace("\n", " ") or "(empty)"


def markdown_report(
    metrics: dict,
    prompts: list[str],
    before: list[str],
    after: list[str],
    samples: int,
    stride: int,
    figures: list[tuple[str, str]] = (),
) -> str:
    """`figures`: (caption, image path relative to the report), shown after the metrics."""
    lines = ["# Evaluation report", ""]
    if "win_judge" in metrics:  # who decided the win rate: the rules, or an independent pairwise judge
        lines += [f"Win rate judged by: {metrics['win_judge']}.", ""]
    if metrics.get("unseen_topic_prompts"):
        lines += [
            f"Held-out prompts on topics no training prompt has: {metrics['unseen_topic_prompts']} "
            f"(the `unseen_topic_*` rows); on seen topics: {metrics.get('seen_topic_prompts', 0)} (`seen_topic_*`).",
            "",
        ]
    lines += ["| metric | value |", "| --- | --- |"]
    lines += [f"| {key} | {value} |" for key, value in sorted(metrics.items())]
    if figures:
        lines += ["", "## Curves", ""]
        for caption, path in figures:
            lines += [f"![{caption}]({path})", ""]
    lines += ["", "## Held-out prompts: the bootstrap policy before, the trained policy after", ""]
    lines += ["| prompt | before | after |", "| --- | --- | --- |"]
    for i in range(0, min(len(prompts), samples * stride), stride):
        lines.append(f"| {_cell(prompts[i])} | {_cell(before[i])} | {_cell(after[i])} |")
    return "\n".join(lines) + "\n"

"""What a flow run shows in the Prefect UI, each under a stable key so the UI keeps its history:
a progress bar over the whole run, sample prompts with their ranked responses, the training curves
as pictures (reward and KL, gold versus proxy, the reward model's score histograms) with their
numbers, the evaluation report with the same pictures, and every stage's metrics."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pandas as pd
from dvc.stage import PipelineStage
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

PROGRESS_KEY = "rlhf-progress"
SAMPLES_KEY = "ranked-samples"
CURVES_KEY = "ppo-curves"
METRICS_KEY = "rlhf-metrics"
SAMPLE_PROMPTS = 5
CURVE_COLUMNS = ["iteration", "score", "kl", "entropy", "response_length"]


class RunProgress:
    """One progress artifact for the run: each stage is an equal share; a stage's own
    `done/total` lines fill its share as it goes, so the bar moves during long stages."""

    def __init__(self, stages: list[str], rounds: int):
        self.units = len(stages) * rounds
        self.finished = 0
        self.artifact_id = create_progress_artifact(
            progress=0.0, key=PROGRESS_KEY, description=f"{len(stages)} stages x {rounds} round(s)"
        )
        self.last_shown = 0.0

    def _show(self, percent: float) -> None:
        if percent - self.last_shown >= 1.0 or percent >= 100.0:  # at most ~100 updates a run
            update_progress_artifact(self.artifact_id, progress=percent)
            self.last_shown = percent

    def within_stage(self, stage: str, share: float) -> None:
        self._show(100.0 * (self.finished + share) / self.units)

    def stage_finished(self) -> None:
        self.finished += 1
        self._show(100.0 * self.finished / self.units)


def ranked_samples_table(root: Path, prompts_path: str, rankings_path: str, responses_path: str) -> list[dict]:
    """A few prompts with their responses in the judge's order, for a look at what the judge did."""
    rankings, responses = pd.read_parquet(root / rankings_path), pd.read_parquet(root / responses_path)
    prompts = pd.read_parquet(root / prompts_path)[["prompt_id", "prompt"]]
    ranked = rankings.merge(responses[["response_id", "response"]], on="response_id").merge(prompts, on="prompt_id")
    shown = sorted(ranked["prompt_id"].unique())[:SAMPLE_PROMPTS]
    ranked = ranked[ranked["prompt_id"].isin(shown)].sort_values(["prompt_id", "rank", "response_id"])
    return [
        {
            "prompt": row.prompt,
            "rank": int(row.rank),
            "score": round(float(row.score), 3),
            "judge": row.judge,
            "response": row.response,
        }
        for row in ranked.itertuples()
    ]


def png_data_url(path: Path) -> str:
    """A PNG as a data URL: the Prefect UI shows artifacts from its database, never from our files."""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


MARKDOWN_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)")


def inline_images(markdown: str, base: Path) -> str:
    """A markdown file's relative PNG links (the report's curves) as data URLs, so the artifact shows them."""

    def inlined(match: re.Match) -> str:
        target = base / match.group(2)
        if target.suffix != ".png" or not target.is_file():
            return match.group(0)
        return f"![{match.group(1)}]({png_data_url(target)})"

    return MARKDOWN_IMAGE.sub(inlined, markdown)


def curves_markdown(curve_csv: Path, pictures: list[tuple[str, Path]] = ()) -> str:
    """The curves as pictures (each PNG that exists), then reward and KL per iteration as a table."""
    curve = pd.read_csv(curve_csv)
    columns = [c for c in CURVE_COLUMNS if c in curve.columns]
    shown = [
        f"![{caption}]({png_data_url(path)})\n\n_{caption}_ (`{path.name}`)"
        for caption, path in pictures
        if path.is_file()
    ]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in curve[columns].itertuples(index=False):
        lines.append("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row) + " |")
    table = f"Reward (`score`) and KL per iteration, from `{curve_csv.name}`.\n\n" + "\n".join(lines)
    return "\n\n".join([*shown, table])


def publish(root: Path, stages: list[PipelineStage], paths: dict[str, str], round_number: int) -> list[dict]:
    """Every artifact a finished round has to show; returns the metrics table's rows."""
    rows = []
    for stage in stages:
        for out in stage.outs:
            path = root / str(out.def_path)
            if out.metric and path.exists():
                metrics = json.loads(path.read_text())
                rows += [{"stage": stage.name, "metric": k, "value": v} for k, v in sorted(metrics.items())]
            elif str(out.def_path).endswith(".md") and path.exists():
                markdown = inline_images(path.read_text(), path.parent)
                create_markdown_artifact(key=f"{stage.name.replace('_', '-')}-report", markdown=markdown)
    if rows:
        create_table_artifact(key=METRICS_KEY, table=rows, description=f"Metrics of every stage, round {round_number}")
    if all((root / paths[k]).exists() for k in ("prompts", "rankings", "responses")):
        create_table_artifact(
            key=SAMPLES_KEY,
            table=ranked_samples_table(root, paths["prompts"], paths["rankings"], paths["responses"]),
            description=f"Sample prompts with their ranked responses, round {round_number}",
        )
    if (root / paths["policy_curve"]).exists():
        pictures = [
            ("Policy training: reward and KL per iteration", root / paths["policy_curve_png"]),
            ("Gold (rules) versus proxy (reward model) against sqrt(KL)", root / paths["gold_png"]),
            ("Reward model: held-out score distributions", root / paths["reward_distribution_png"]),
        ]
        create_markdown_artifact(key=CURVES_KEY, markdown=curves_markdown(root / paths["policy_curve"], pictures))
    return rows

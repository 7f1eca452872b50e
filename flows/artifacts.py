"""What a flow run shows in the Prefect UI, each under a stable key so the UI keeps its history:
a progress bar over the whole run, sample prompts with their ranked responses, the PPO reward and
KL curves, the evaluation report, and every stage's metrics."""

from __future__ import annotations

import json
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
        {"prompt": row.prompt, "rank": int(row.rank), "score": round(float(row.score), 3), "judge": row.judge,
         "response": row.response}
        for row in ranked.itertuples()
    ]  # fmt: skip


def curves_markdown(curve_csv: Path) -> str:
    """Reward and KL per PPO iteration as a markdown table (the PNG is in plots/, for `dvc plots show`)."""
    curve = pd.read_csv(curve_csv)
    columns = [c for c in CURVE_COLUMNS if c in curve.columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in curve[columns].itertuples(index=False):
        lines.append("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row) + " |")
    return f"PPO reward (`score`) and KL per iteration, from `{curve_csv.name}`.\n\n" + "\n".join(lines)


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
                create_markdown_artifact(key=f"{stage.name.replace('_', '-')}-report", markdown=path.read_text())
    if rows:
        create_table_artifact(key=METRICS_KEY, table=rows, description=f"Metrics of every stage, round {round_number}")
    if all((root / paths[k]).exists() for k in ("prompts", "rankings", "responses")):
        create_table_artifact(
            key=SAMPLES_KEY,
            table=ranked_samples_table(root, paths["prompts"], paths["rankings"], paths["responses"]),
            description=f"Sample prompts with their ranked responses, round {round_number}",
        )
    if (root / paths["ppo_curve"]).exists():
        create_markdown_artifact(key=CURVES_KEY, markdown=curves_markdown(root / paths["ppo_curve"]))
    return rows

"""Stage evaluate: the final policy against the bootstrap policy on held-out prompts (rlhf.evaluation)."""

import json
import os
from pathlib import Path

import pandas as pd

from rlhf.evaluation import evaluate, markdown_report
from rlhf.snapshot import read_comparisons
from rlhf.stages._stage import params_from, parse_paths, run_stage, write_json

STAGE = "evaluate"


def main() -> None:
    args = parse_paths(
        STAGE,
        [
            "prompts",
            "comparisons",
            "rank_metrics",
            "feedback_metrics",
            "policy_metrics",
            "start_dir",
            "policy_dir",
            "reward_dir",
            "policy_curve_png",
            "gold_png",
            "reward_distribution_png",
        ],
        ["metrics", "report"],
    )
    params = params_from(args)
    evaluation = evaluate(
        params,
        pd.read_parquet(args.prompts),
        read_comparisons(args.comparisons),
        args.start_dir,
        args.policy_dir,
        args.reward_dir,
        trained=json.loads(Path(args.policy_metrics).read_text()),
        rank_metrics=json.loads(Path(args.rank_metrics).read_text()),
        feedback_metrics=json.loads(Path(args.feedback_metrics).read_text()),
    )
    write_json(args.metrics, evaluation.metrics)
    figures = [
        (caption, os.path.relpath(path, Path(args.report).parent))  # relative: the report renders where it lies
        for caption, path in [
            ("Policy training: reward and KL per iteration", args.policy_curve_png),
            ("Gold (rules) versus proxy (reward model) score against sqrt(KL)", args.gold_png),
            ("Reward model: held-out score distributions", args.reward_distribution_png),
        ]
        if Path(path).exists()  # a stage run by hand may come without them
    ]
    section = params.evaluate
    report = markdown_report(
        evaluation.metrics,
        evaluation.prompts,
        evaluation.before,
        evaluation.after,
        section.report_samples,
        section.samples_per_prompt,
        figures,
    )
    Path(args.report).parent.mkdir(parents=True, exist_ok=True)
    Path(args.report).write_text(report)
    print(f"{STAGE}: {evaluation.metrics}")


if __name__ == "__main__":
    run_stage(STAGE, main)

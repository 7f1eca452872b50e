"""Stage evaluate: the final policy against the bootstrap policy on held-out prompts (rlhf.evaluation)."""

import json
from pathlib import Path

import pandas as pd

from rlhf.evaluation import evaluate, write_report
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
    pictures = [
        ("Policy training: reward and KL per iteration", Path(args.policy_curve_png)),
        ("Gold (rules) versus proxy (reward model) score against sqrt(KL)", Path(args.gold_png)),
        ("Reward model: held-out score distributions", Path(args.reward_distribution_png)),
    ]
    section = params.evaluate
    write_report(args.report, evaluation, section.report_samples, section.samples_per_prompt, pictures)
    print(f"{STAGE}: {evaluation.metrics}")


if __name__ == "__main__":
    run_stage(STAGE, main)

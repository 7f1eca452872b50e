"""Stage evaluate: the final policy against the bootstrap policy on held-out prompts (rlhf.evaluation).

With `workers.evaluate` above 1 the stage runs itself again as that many processes under torchrun,
each sampling and scoring its share of the held-out batches (rlhf.sharding); the metrics and the
report are those one process writes, and a run killed part-way keeps the batches it finished
(--parts_dir).
"""

import json
from pathlib import Path

import pandas as pd

from rlhf.evaluation import SAMPLE_COLUMNS, HeldOut, finish_evaluation, policy_comparison, write_report
from rlhf.pretrained import checkpoint_hash, resolve_device
from rlhf.sharding import BatchParts, run_batches, start_workers
from rlhf.snapshot import read_comparisons
from rlhf.stages._stage import log_progress, params_from, parse_paths, run_stage, write_json
from rlhf.text import content_id

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
        ["metrics", "report", "parts_dir"],
    )
    params = params_from(args)
    worker = start_workers(STAGE, params.workers.evaluate)
    prompts = pd.read_parquet(args.prompts)
    held_out = HeldOut.of(prompts, params.evaluate.samples_per_prompt)
    device = worker.place(resolve_device(params.device))
    comparison = policy_comparison(params, held_out, args.start_dir, args.policy_dir, args.reward_dir, device)
    # What the parts were measured from: a part of other policies, prompts or settings is discarded.
    fingerprint = {
        "params": params.model_dump(mode="json", include={"seed", "evaluate", "train_policy", "rank_responses"}),
        "models": [checkpoint_hash(path) for path in (args.start_dir, args.policy_dir, args.reward_dir)],
        "prompts": content_id(*held_out.texts),
    }
    parts = BatchParts(args.parts_dir, fingerprint)
    tables = run_batches(
        len(comparison.batches),
        comparison.compare_batch,
        parts,
        worker,
        log_progress(f"{worker.label(STAGE)}: batches"),
    )
    if tables is None:  # not rank 0: rank 0 writes
        return
    evaluation = finish_evaluation(
        params,
        held_out,
        comparison,
        tables.get("samples", pd.DataFrame(columns=SAMPLE_COLUMNS)),
        read_comparisons(args.comparisons),
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
    parts.remove()
    print(f"{STAGE}: {evaluation.metrics}")


if __name__ == "__main__":
    run_stage(STAGE, main)

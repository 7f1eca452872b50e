"""Stage train_reward: a Bradley-Terry reward model on the comparisons snapshot."""

from pathlib import Path

from rlhf.pretrained import resolve_device
from rlhf.reward_models.train import train_reward_model
from rlhf.snapshot import read_comparisons
from rlhf.stages._stage import log_progress, params_from, parse_paths, run_stage, write_json
from rlhf.tracking import Tracker

STAGE = "train_reward"


def main() -> None:
    args = parse_paths(STAGE, ["comparisons", "init_dir"], ["model_dir", "metrics", "distribution_png", "live_dir"])
    params = params_from(args)
    device = resolve_device(params.device)
    comparisons = read_comparisons(args.comparisons)
    partial_png = Path(args.distribution_png + ".partial")
    partial_png.parent.mkdir(parents=True, exist_ok=True)
    with Tracker(
        STAGE, params.tracking, args.live_dir, {STAGE: params.train_reward.model_dump(mode="json")}
    ) as tracker:
        metrics = train_reward_model(
            comparisons,
            Path(args.init_dir),
            params.train_reward,
            params.seed,
            device,
            Path(args.model_dir),
            partial_png,
            progress=log_progress(f"{STAGE}: steps"),
            tracker=tracker,
        )
    if partial_png.exists():
        partial_png.replace(args.distribution_png)
    write_json(args.metrics, metrics)
    print(f"{STAGE}: {metrics}")


if __name__ == "__main__":
    run_stage(STAGE, main)

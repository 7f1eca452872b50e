"""Stage train_reward: a Bradley-Terry reward model on the comparisons snapshot, or on its binary
labels (thumbs up/down), or on both (train_reward.labels)."""

from pathlib import Path

import pandas as pd

from rlhf.errors import InputError
from rlhf.pretrained import resolve_device
from rlhf.reward_models.train import train_reward_model
from rlhf.snapshot import BINARY_LABELS, read_comparisons
from rlhf.stages._stage import log_progress, params_from, parse_paths, run_stage, write_json
from rlhf.tracking import Tracker

STAGE = "train_reward"


def read_binary_labels(comparisons_dir: str | Path) -> pd.DataFrame:
    """The binary labels beside the comparisons; one error naming the file if it is not there."""
    path = Path(comparisons_dir) / BINARY_LABELS
    if not path.is_file():
        raise InputError(
            f"{path}: no binary labels snapshot; train_reward.labels binary and both train on it "
            "(store_comparisons writes it)"
        )
    return pd.read_parquet(path)


def main() -> None:
    args = parse_paths(STAGE, ["comparisons", "init_dir"], ["model_dir", "metrics", "distribution_png", "live_dir"])
    params = params_from(args)
    device = resolve_device(params.device)
    comparisons = read_comparisons(args.comparisons)
    labels = read_binary_labels(args.comparisons) if params.train_reward.labels != "pairwise" else None
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
            binary_labels=labels,
        )
    if partial_png.exists():
        partial_png.replace(args.distribution_png)
    write_json(args.metrics, metrics)
    print(f"{STAGE}: {metrics}")


if __name__ == "__main__":
    run_stage(STAGE, main)

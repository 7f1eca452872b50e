"""Stage train_reward: a Bradley-Terry reward model on the comparisons snapshot, or on its binary
labels (thumbs up/down), or on both (train_reward.labels).

With `train_reward.launcher` other than `single`, the stage runs itself again as `num_processes`
processes (rlhf/launch.py). Every `checkpoint_every` steps the Trainer writes a checkpoint under
`--checkpoint_dir`; a run killed part-way resumes from it when started again with the same params
and inputs, and the directory is removed once the reward model is written.
"""

import os
from pathlib import Path

import pandas as pd

from rlhf.config import Params
from rlhf.errors import InputError
from rlhf.launch import is_launched_process, relaunch_as_processes
from rlhf.pretrained import checkpoint_hash, resolve_device
from rlhf.reward_models.resumable import RewardCheckpoints
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


def fingerprint(params: Params, comparisons_dir: str, init_dir: str) -> dict:
    """What a checkpoint must match to be resumed: the train_reward settings, the seed and the inputs."""
    config = params.train_reward
    init_from = config.backbone or init_dir
    return {
        "train_reward": config.model_dump(mode="json"),
        "seed": params.seed,
        "comparisons": checkpoint_hash(comparisons_dir),
        "init_from": checkpoint_hash(init_from) if Path(init_from).is_dir() else str(init_from),
    }


def main() -> None:
    args = parse_paths(
        STAGE,
        ["comparisons", "init_dir"],
        ["model_dir", "metrics", "distribution_png", "live_dir", "checkpoint_dir"],
    )
    params = params_from(args)
    config = params.train_reward
    device = resolve_device(params.device)
    comparisons = read_comparisons(args.comparisons)
    labels = read_binary_labels(args.comparisons) if config.labels != "pairwise" else None
    checkpoints = RewardCheckpoints(args.checkpoint_dir)
    if not is_launched_process():  # once, before any training process starts
        if config.train and config.checkpoint_every:
            checkpoints.prepare(fingerprint(params, args.comparisons, args.init_dir))
        if config.launcher != "single":
            relaunch_as_processes(STAGE, config.launcher, config.num_processes, device)
    main_process = int(os.environ.get("RANK", "0")) == 0
    partial_png = Path(args.distribution_png + ".partial")
    partial_png.parent.mkdir(parents=True, exist_ok=True)
    with Tracker(
        STAGE, params.tracking, args.live_dir, {STAGE: config.model_dump(mode="json")}, main_process=main_process
    ) as tracker:
        metrics = train_reward_model(
            comparisons,
            Path(args.init_dir),
            config,
            params.seed,
            device,
            Path(args.model_dir),
            partial_png,
            progress=log_progress(f"{STAGE}: steps"),
            tracker=tracker,
            binary_labels=labels,
            checkpoints=checkpoints,
        )
    if metrics is None:  # not the main process
        return
    if partial_png.exists():
        partial_png.replace(args.distribution_png)
    write_json(args.metrics, metrics)
    checkpoints.remove()  # the reward model is written: nothing left to resume
    print(f"{STAGE}: {metrics}")


if __name__ == "__main__":
    run_stage(STAGE, main)

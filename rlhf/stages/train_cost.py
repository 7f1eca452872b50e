"""Stage train_cost: Safe RLHF's cost model on the snapshot's harmlessness labels, when a policy
algorithm reads one (rlhf.reward_models.cost_when_read)."""

from pathlib import Path

from rlhf.reward_models.cost_when_read import train_cost_model_when_read
from rlhf.snapshot import read_safety_labels
from rlhf.stages._stage import log_progress, params_from, parse_paths, run_stage, write_json
from rlhf.tracking import Tracker

STAGE = "train_cost"


def main() -> None:
    args = parse_paths(STAGE, ["comparisons", "init_dir"], ["model_dir", "metrics", "live_dir"])
    params = params_from(args)
    with Tracker(STAGE, params.tracking, args.live_dir, {STAGE: params.train_cost.model_dump(mode="json")}) as tracker:
        metrics = train_cost_model_when_read(
            read_safety_labels(args.comparisons),
            params,
            Path(args.init_dir),
            Path(args.model_dir),
            progress=log_progress(f"{STAGE}: steps"),
            tracker=tracker,
        )
    write_json(args.metrics, metrics)
    print(f"{STAGE}: {metrics}")


if __name__ == "__main__":
    run_stage(STAGE, main)

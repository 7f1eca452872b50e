"""Stage train_cost: Safe RLHF's cost model on the snapshot's harmlessness labels (rlhf.reward_models.cost)."""

from pathlib import Path

from rlhf.reward_models.untrained import COST_READERS, skip_cost_model
from rlhf.snapshot import read_safety_labels
from rlhf.stages._stage import log_progress, params_from, parse_paths, run_stage, write_json
from rlhf.tracking import Tracker

STAGE = "train_cost"


def main() -> None:
    args = parse_paths(STAGE, ["comparisons", "init_dir"], ["model_dir", "metrics", "live_dir"])
    params = params_from(args)
    labels = read_safety_labels(args.comparisons)
    algorithm = params.train_policy.algorithm
    with Tracker(STAGE, params.tracking, args.live_dir, {STAGE: params.train_cost.model_dump(mode="json")}) as tracker:
        if params.train_cost.when == "needed" and algorithm not in COST_READERS:
            # Nothing downstream reads it: the untrained marker, as when there are no labels, says why.
            reason = f"train_policy.algorithm is {algorithm}, which reads no cost model (train_cost.when: always)"
            metrics = skip_cost_model(Path(args.model_dir), reason, len(labels))
        else:
            # Imported here: the skip above needs neither torch nor transformers (rlhf.reward_models.untrained).
            from rlhf.pretrained import resolve_device
            from rlhf.reward_models.cost import train_cost_model

            metrics = train_cost_model(
                labels,
                Path(args.init_dir),
                params.train_cost,
                params.seed,
                resolve_device(params.device),
                Path(args.model_dir),
                progress=log_progress(f"{STAGE}: steps"),
                tracker=tracker,
            )
    write_json(args.metrics, metrics)
    print(f"{STAGE}: {metrics}")


if __name__ == "__main__":
    run_stage(STAGE, main)

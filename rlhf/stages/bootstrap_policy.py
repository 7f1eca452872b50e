"""Stage bootstrap_policy: the starting policy (demo SFT, or a pretrained model passed through or
fine-tuned on demonstrations; rlhf.bootstrap). The model directory appears whole or not at all."""

from pathlib import Path

from rlhf.bootstrap import bootstrap_policy
from rlhf.pretrained import resolve_device
from rlhf.stages._stage import params_from, parse_paths, run_stage, write_dir_whole, write_json
from rlhf.tracking import Tracker

STAGE = "bootstrap_policy"


def main() -> None:
    args = parse_paths(STAGE, [], ["model_dir", "metrics", "live_dir"])
    params = params_from(args)
    device = resolve_device(params.device)
    tracker_config = {STAGE: params.bootstrap_policy.model_dump(mode="json")}
    with Tracker(STAGE, params.tracking, args.live_dir, tracker_config) as tracker:
        metrics = write_dir_whole(Path(args.model_dir), lambda out: bootstrap_policy(params, device, out, tracker))
    write_json(args.metrics, metrics)


if __name__ == "__main__":
    run_stage(STAGE, main)

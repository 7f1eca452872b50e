"""Stage bootstrap_policy: the starting policy (demo SFT, or a pretrained model passed through or
fine-tuned on demonstrations). The model directory appears whole or not at all."""

import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from rlhf.bootstrap import bootstrap_pretrained, train_demo_policy
from rlhf.config import BootstrapPolicyParams, Params
from rlhf.demo import domain
from rlhf.models import resolve_device
from rlhf.stages._stage import params_from, parse_paths, run_stage, write_json
from rlhf.tracking import Tracker

STAGE = "bootstrap_policy"


def write_dir_whole(out_dir: Path, write: Callable[[Path], dict]) -> dict:
    """Run `write` into a temporary directory beside `out_dir`, then rename it into place; on any
    failure the temporary directory is removed and `out_dir` is left as it was."""
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    try:
        result = write(partial)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    shutil.rmtree(out_dir, ignore_errors=True)
    partial.rename(out_dir)
    return result


def main() -> None:
    args = parse_paths(STAGE, [], ["model_dir", "metrics", "live_dir"])
    params = params_from(args)
    section, device = params.bootstrap_policy, resolve_device(params.device)
    with Tracker(STAGE, params.tracking, args.live_dir, {STAGE: section.model_dump(mode="json")}) as tracker:
        metrics = bootstrap(params, section, device, Path(args.model_dir), tracker)
    write_json(args.metrics, metrics)


def bootstrap(
    params: Params, section: BootstrapPolicyParams, device: torch.device, model_dir: Path, tracker: Tracker
) -> dict:
    """The starting policy into `model_dir`, whole or not at all; its SFT steps go to `tracker`."""
    if section.source == "demo":
        # Demonstrations only for training prompts: held-out prompts stay unseen until evaluation.
        train = [
            (p, t)
            for p, t in domain.all_prompts()
            if domain.split(p, t, params.collect_prompts.test_fraction) == "train"
        ]
        return write_dir_whole(
            model_dir, lambda out: train_demo_policy(section, train, params.seed, device, out, tracker)
        )
    return write_dir_whole(model_dir, lambda out: bootstrap_pretrained(section, params.seed, device, out, tracker))


if __name__ == "__main__":
    run_stage(STAGE, main)

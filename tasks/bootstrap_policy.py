"""Stage bootstrap_policy: the starting policy (demo SFT, or a pretrained model passed through)."""

from pathlib import Path

from rlhf.bootstrap import pass_through_pretrained, train_demo_policy
from rlhf.demo import domain
from rlhf.models import resolve_device
from rlhf.prompts import split_of
from tasks._stage import params_from, parse_paths, run_stage, write_json

STAGE = "bootstrap_policy"


def main() -> None:
    args = parse_paths(STAGE, [], ["model_dir", "metrics"])
    params = params_from(args)
    section, device = params.bootstrap_policy, resolve_device(params.device)
    out_dir = Path(args.model_dir)
    if section.source == "demo":
        # Demonstrations only for training prompts: held-out prompts stay unseen until evaluation.
        train = [
            (p, t) for p, t in domain.all_prompts() if split_of(p, params.collect_prompts.test_fraction) == "train"
        ]
        metrics = train_demo_policy(section, train, params.seed, device, out_dir)
    else:
        metrics = pass_through_pretrained(section.model, device, out_dir)
    write_json(args.metrics, metrics)


if __name__ == "__main__":
    run_stage(STAGE, main)

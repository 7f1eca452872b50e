"""Stage train_policy: online RL from the round's start policy against the online reward (PPO
with a critic; GRPO, RLOO, REINFORCE++ without one), or DPO or KTO on the comparisons snapshot
(`train_policy.algorithm`). The online reward is `train_policy.reward`: the reward model, the
rules (rank_responses.principles), a reward server over HTTP, or a weighted sum of these.

With `train_policy.launcher` other than `single`, the stage runs itself again under
`accelerate launch` with the matching file in configs/accelerate/ and `num_processes` processes.
A run killed part-way resumes from `--checkpoint_dir` when it is started again with the same
params and inputs; the directory is removed once the policy is written.

The online algorithms evaluate in the loop (train_policy.eval_every) on the first `eval_prompts`
test-split prompts by prompt_id, with evaluate.judge; `keep: best` writes the policy of the best
in-loop win rate.
Every iteration's metrics, and every log_samples_every iterations a table of samples, go to the
trackers (rlhf/tracking.py): DVCLive in --live_dir, and tracking.report_to.

The work is rlhf.policy_optimization.from_inputs (train_online, train_offline); this module reads
the arguments, starts the processes and writes the curve, its figures and the metrics.
"""

import shutil

import pandas as pd

from rlhf.config import Params
from rlhf.launch import is_launched_process, relaunch_as_processes
from rlhf.plots import render_curve, render_gold_vs_proxy
from rlhf.policy_optimization.from_inputs import PolicyInputs, PolicyOutcome, train_offline, train_online
from rlhf.pretrained import resolve_device
from rlhf.stages._stage import log_progress, params_from, parse_paths, run_stage, write_json, write_whole

STAGE = "train_policy"
INPUTS = ["prompts", "comparisons", "policy_dir", "reference_dir", "reward_dir", "cost_dir"]


def write_outputs(args, outcome: PolicyOutcome) -> None:
    curve = pd.DataFrame(outcome.history)
    write_whole(args.curve, lambda path: curve.to_csv(path, index=False))
    write_whole(args.curve_png, lambda path: render_curve(curve, outcome.curve_columns, path))
    write_whole(args.gold_png, lambda path: render_gold_vs_proxy(curve, path))
    write_json(args.metrics, outcome.metrics)


def train_kto(params: Params, inputs: PolicyInputs, model_dir: str, live_dir: str, progress) -> PolicyOutcome:
    # Imported here: TRL's KTOTrainer, datasets and peft, which the other algorithms never load.
    from rlhf.policy_optimization.kto import train_from_inputs

    return train_from_inputs(params, inputs, model_dir, live_dir, progress)


def main() -> None:
    args = parse_paths(
        STAGE, INPUTS, ["model_dir", "metrics", "curve", "curve_png", "gold_png", "checkpoint_dir", "live_dir"]
    )
    params = params_from(args)
    inputs = PolicyInputs(**{name: getattr(args, name) for name in INPUTS})
    if params.train_policy.algorithm in ("dpo", "kto"):
        train = train_offline if params.train_policy.algorithm == "dpo" else train_kto
        outcome = train(params, inputs, args.model_dir, args.live_dir, log_progress(f"{STAGE}: steps"))
        write_outputs(args, outcome)
        print(f"{STAGE}: {outcome.metrics}", flush=True)
        return
    config = params.train_policy
    if config.launcher != "single" and not is_launched_process():
        relaunch_as_processes(STAGE, config.launcher, config.num_processes, resolve_device(params.device))
    outcome = train_online(params, inputs, args.model_dir, args.checkpoint_dir, args.live_dir)
    if outcome is None:  # not the main process
        return
    write_outputs(args, outcome)
    shutil.rmtree(args.checkpoint_dir, ignore_errors=True)  # the policy is written: nothing left to resume


if __name__ == "__main__":
    run_stage(STAGE, main)

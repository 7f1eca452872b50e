"""Stage train_policy: online RL from the round's start policy against the online reward (PPO
with a critic; GRPO, RLOO, REINFORCE++ without one), or DPO on the comparisons snapshot
(`train_policy.algorithm`). The online reward is `train_policy.reward`: the reward model, the
rules (rank_responses.principles), a reward server over HTTP, or a weighted sum of these.

With `train_policy.launcher` other than `single`, the stage runs itself again under
`accelerate launch` with the matching file in configs/accelerate/ and `num_processes` processes.
A run killed part-way resumes from `--checkpoint_dir` when it is started again with the same
params and inputs; the directory is removed once the policy is written.

PPO evaluates in the loop (train_policy.eval_every) on the first `eval_prompts` test-split prompts
by prompt_id, with evaluate.judge; `keep: best` writes the policy of the best in-loop win rate.
Every iteration's metrics, and every log_samples_every iterations a table of samples, go to the
trackers (rlhf/tracking.py): DVCLive in --live_dir, and tracking.report_to.
"""

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from accelerate.utils import gather_object, set_seed

from rlhf import chat
from rlhf.config import Params
from rlhf.errors import ConfigError
from rlhf.judges import RuleJudge, make_judge
from rlhf.models import checkpoint_hash, load_policy, load_scalar_head_model, load_tokenizer, resolve_device
from rlhf.plots import render_curve, render_gold_vs_proxy
from rlhf.policy_optimization.checkpoint import Checkpoints
from rlhf.policy_optimization.in_loop_eval import WinRateVsStart
from rlhf.policy_optimization.models import PPOModels, count_parameters, critic_start
from rlhf.policy_optimization.rollout import RewardScorer
from rlhf.policy_optimization.trainer import make_accelerator, offloaded, peak_rss_mb, save_policy, train_ppo
from rlhf.reward_models.cost import load_cost_model
from rlhf.reward_models.ensemble import load_reward_model
from rlhf.rewards.rules import RulesReward
from rlhf.rewards.terms import online_reward, usage_of
from rlhf.snapshot import read_comparisons
from rlhf.stages._stage import log_progress, params_from, parse_paths, run_stage, write_json, write_whole
from rlhf.tracking import Tracker

STAGE = "train_policy"
ACCELERATE_CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "accelerate"
CURVE_COLUMNS = [
    "score",
    "kl",
    "entropy",
    "clip_fraction",
    "approx_kl",
    "value_loss",
    "response_length",
    "eval_win_rate",
    "tokens_per_second",
]
DPO_CURVE_COLUMNS = ["loss", "reward_margin", "reward_accuracy"]
SAFETY_CURVE_COLUMNS = ["cost", "lagrange_multiplier"]


def relaunch_as_processes(params: Params) -> None:
    """Run this same command as `num_processes` processes: `accelerate launch` with the launcher's
    config (on CPU the trainer joins the processes over gloo), except DDP on CPU, which runs under
    torchrun (accelerate would want MPI there)."""
    config = params.train_policy
    if os.environ.get("RLHF_LAUNCHED"):
        raise RuntimeError("train_policy: the launcher started a single process; see configs/accelerate/")
    if resolve_device(params.device).type == "cpu" and config.launcher == "ddp":
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
        launch += [str(config.num_processes)]
    else:
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(config.num_processes)]
        # port 0: accelerate picks a free one, so runs side by side on one machine do not collide
        launch += ["--config_file", str(ACCELERATE_CONFIGS / f"{config.launcher}.yaml"), "--main_process_port", "0"]
    print(f"{STAGE}: launching {config.num_processes} processes ({config.launcher})", flush=True)
    env = {**os.environ, "RLHF_LAUNCHED": "1"}
    done = subprocess.run([*launch, "-m", f"rlhf.stages.{STAGE}", *sys.argv[1:]], env=env, check=False)
    sys.exit(done.returncode)


def fingerprint(params: Params, args) -> dict:
    """What a checkpoint must match to be resumed: the PPO settings, the seed and the inputs."""
    return {
        "train_policy": params.train_policy.model_dump(mode="json"),
        "seed": params.seed,
        "policy": checkpoint_hash(args.policy_dir),
        "reference": checkpoint_hash(args.reference_dir),
        "reward": checkpoint_hash(args.reward_dir),
        "cost": checkpoint_hash(args.cost_dir) if params.train_policy.algorithm == "ppo_lagrangian" else None,
        "prompts": hashlib.sha256(Path(args.prompts).read_bytes()).hexdigest()[:16],
    }


def write_curve(args, history: list[dict], columns: list[str]) -> None:
    curve = pd.DataFrame(history)
    write_whole(args.curve, lambda path: curve.to_csv(path, index=False))
    write_whole(args.curve_png, lambda path: render_curve(curve, columns, path))
    write_whole(args.gold_png, lambda path: render_gold_vs_proxy(curve, path))


def main_dpo(args, params: Params, tracker: Tracker) -> None:
    """DPO: the policy from the round's start, the bootstrap policy as reference, the snapshot's pairs."""
    # Imported here: it brings in TRL, datasets and peft, which the PPO family never uses.
    from rlhf.policy_optimization.dpo import train_dpo

    config = params.train_policy
    device = resolve_device(params.device)
    set_seed(params.seed)
    tokenizer = load_tokenizer(args.policy_dir)
    policy = load_policy(args.policy_dir, device)
    print(f"{STAGE}: DPO, beta {config.dpo.beta}, {count_parameters(policy)[1]:,} parameters", flush=True)
    result = train_dpo(
        policy,
        load_policy(args.reference_dir, device),
        tokenizer,
        read_comparisons(args.comparisons),
        config.dpo,
        params.seed,
        progress=log_progress(f"{STAGE}: steps"),
        tracker=tracker,
    )
    policy.save_pretrained(args.model_dir)
    tokenizer.save_pretrained(args.model_dir)
    history = [{"iteration": row["step"], **row} for row in result.history]
    write_curve(args, history, DPO_CURVE_COLUMNS)
    write_json(args.metrics, {"algorithm": "dpo", **result.metrics, "peak_rss_mb": round(peak_rss_mb(), 1)})
    print(f"{STAGE}: {result.metrics}", flush=True)


def judge_usage(scorer, accelerator) -> dict[str, dict]:
    """usage_of(scorer) summed over the processes (each rated its own share of every rollout)."""
    usage = usage_of(scorer)
    for name, counts in usage.items():
        keys = sorted(counts)
        local = torch.tensor([float(counts[key]) for key in keys], dtype=torch.float64, device=accelerator.device)
        total = accelerator.reduce(local, reduction="sum").tolist()
        usage[name] = {key: round(value, 6) if key == "cost" else int(value) for key, value in zip(keys, total)}
    return usage


def train_conversations(prompts: pd.DataFrame) -> list[chat.Conversation]:
    """The train split's prompts as conversations, in the order of their text (a fixed order)."""
    train = prompts[prompts["split"] == "train"].sort_values("prompt", kind="stable")
    return chat.conversations_of(train)


def topics_of(prompts: pd.DataFrame) -> list[str | None]:
    """Each prompt's topic (the rules judge reads it), None where the prompts have none."""
    return [None if pd.isna(t) else t for t in prompts.get("topic", pd.Series([None] * len(prompts)))]


def in_loop_evaluator(params: Params, prompts: pd.DataFrame, device) -> WinRateVsStart | None:
    """The in-loop win rate's held-out prompts and judge: the first `eval_prompts` test prompts in
    prompt_id order (the same ones every run), judged as the evaluate stage judges."""
    config = params.train_policy
    if config.eval_every == 0:
        return None
    test = prompts[prompts["split"] == "test"]
    order = "prompt_id" if "prompt_id" in test else "prompt"  # prompt_id: a content hash, so no topic comes first
    held_out = test.sort_values(order, kind="stable").head(config.eval_prompts)
    if held_out.empty:
        if config.keep == "best":
            raise ConfigError("params.yaml: train_policy.keep: best needs held-out (test split) prompts to evaluate on")
        print(f"{STAGE}: no held-out (test split) prompts: the in-loop evaluation is off", flush=True)
        return None
    win_judge = None
    if params.evaluate.judge != "rules":
        section = params.evaluate
        judge_params = params.rank_responses.model_copy(update={"llm": section.llm, "openai": section.openai})
        win_judge = make_judge(judge_params, device, kind=section.judge)
    judge = RuleJudge(params.rank_responses.principles)
    return WinRateVsStart(chat.conversations_of(held_out), topics_of(held_out), judge, win_judge, seed=params.seed)


def load_critic(args, config, tokenizer, reward_tokenizer, device):
    """PPO's critic and whether it starts as the reward model (critic_start); (None, False) for the
    critic-free algorithms, which load nothing of one."""
    if config.critic_free:
        return None, False
    reward_alone = [(term.source, term.weight) for term in config.reward] == [("reward_model", 1.0)]
    critic_dir = critic_start(Path(args.policy_dir), Path(args.reward_dir), tokenizer, reward_tokenizer, reward_alone)
    return load_scalar_head_model(critic_dir, device, tokenizer.pad_token_id), critic_dir == Path(args.reward_dir)


def main() -> None:
    args = parse_paths(
        STAGE,
        ["prompts", "comparisons", "policy_dir", "reference_dir", "reward_dir", "cost_dir"],
        ["model_dir", "metrics", "curve", "curve_png", "gold_png", "checkpoint_dir", "live_dir"],
    )
    params = params_from(args)
    config = params.train_policy
    if config.algorithm == "dpo":
        with Tracker(
            STAGE, params.tracking, args.live_dir, {STAGE: config.model_dump(mode="json")}, tables=("samples",)
        ) as tracker:
            main_dpo(args, params, tracker)
        return
    if config.launcher != "single" and "WORLD_SIZE" not in os.environ:
        relaunch_as_processes(params)
    accelerator = make_accelerator(config, resolve_device(params.device))
    set_seed(params.seed)  # LoRA adapters and new heads start the same in every process and every run
    prompts = pd.read_parquet(args.prompts)
    train_prompts = train_conversations(prompts)
    tokenizer = load_tokenizer(args.policy_dir)
    reward_tokenizer = load_tokenizer(args.reward_dir)
    # the frozen models load on the CPU, then go to the device or stay in CPU memory (offload_* keys)
    device, cpu = accelerator.device, torch.device("cpu")
    critic, critic_is_reward_model = load_critic(args, config, tokenizer, reward_tokenizer, device)
    models = PPOModels.build(
        load_policy(args.policy_dir, device),
        critic,
        config,
        # The KL anchor stays the SFT policy over every round; with LoRA it is the round's start
        # policy with adapters off (no second copy is held).
        reference=None
        if config.lora_rank
        else offloaded(load_policy(args.reference_dir, cpu), device, config.offload_reference),
        critic_is_reward_model=critic_is_reward_model,
    )
    topics = {chat.to_json(c): t for c, t in zip(chat.conversations_of(prompts), topics_of(prompts))}
    scorer = online_reward(
        config.reward,
        lambda: RewardScorer(
            offloaded(
                load_reward_model(args.reward_dir, cpu, reward_tokenizer.pad_token_id),
                device,
                config.offload_reward_model,
            ),
            reward_tokenizer,
        ),
        params.rank_responses.principles,
        topics,
        tokenizer,
        device,
    )
    gold_scorer = None
    if config.gold_judge == "rules":
        gold_scorer = RulesReward(params.rank_responses.principles, topics)  # the gold judge
    cost_scorer = None
    if config.algorithm == "ppo_lagrangian":
        cost_model, cost_tokenizer = load_cost_model(args.cost_dir, cpu)
        cost_scorer = RewardScorer(offloaded(cost_model, device, config.offload_reward_model), cost_tokenizer)
    evaluator = in_loop_evaluator(params, prompts, device)
    trainable, total = count_parameters(models.trained.policy)
    if accelerator.is_main_process:
        print(f"{STAGE}: policy {total:,} parameters, {trainable:,} trained; {accelerator.num_processes} process(es)")

    def log(row: dict) -> None:
        if not accelerator.is_main_process:
            return
        if "resumed_from" in row:
            print(f"{STAGE}: resumed after iteration {row['resumed_from']} from {row['checkpoint']}", flush=True)
            tracker.resumed_after(row["resumed_from"], row["history"])
            return
        if "stopped_early" in row:
            print(f"{STAGE}: stopped early at iteration {row['iteration']}: {row['stopped_early']}", flush=True)
            return
        print(
            f"{STAGE}: iteration {row['iteration']}/{config.iterations} "
            f"score {row['score']:+.3f} kl {row['kl']:.3f} length {row['response_length']:.1f} "
            f"repetition {row['repetition']:.3f} entropy {row['entropy']:.3f} clip {row['clip_fraction']:.3f}"
            + (f" cost {row['cost']:.3f} lambda {row['lagrange_multiplier']:.2f}" if "cost" in row else "")
            + (f" win rate vs start {row['eval_win_rate']:.3f}" if "eval_win_rate" in row else ""),
            flush=True,
        )
        tracker.log_metrics(row, row["iteration"])

    def log_samples(iteration: int, rows: list[dict]) -> None:
        tracker.log_table("samples", rows, iteration)

    started = time.perf_counter()
    tracker = Tracker(
        STAGE,
        params.tracking,
        args.live_dir,
        {STAGE: config.model_dump(mode="json")},
        main_process=accelerator.is_main_process,
        tables=("samples",),
    )
    with tracker:
        result = train_ppo(
            models,
            scorer,
            tokenizer,
            train_prompts,
            config,
            params.seed,
            log,
            accelerator=accelerator,
            checkpoint_dir=args.checkpoint_dir,
            fingerprint=fingerprint(params, args),
            cost_scorer=cost_scorer,
            gold_scorer=gold_scorer,
            evaluator=evaluator,
            log_samples=log_samples,
        )
    save_policy(models, accelerator, tokenizer, args.model_dir)
    usage = judge_usage(scorer, accelerator)
    # every process's own peak: under ZeRO-3 / FSDP the shards make them the figure that matters
    peaks = gather_object([peak_rss_mb()])
    if not accelerator.is_main_process:
        return
    for name, counts in usage.items():
        print(f"{STAGE}: reward {name}: " + ", ".join(f"{k} {v}" for k, v in counts.items()), flush=True)
    safety = SAFETY_CURVE_COLUMNS if cost_scorer else []
    write_curve(args, result.history, CURVE_COLUMNS + safety)
    last = result.history[-1]
    metrics = {"algorithm": config.algorithm}
    metrics.update({k: last[k] for k in ("score", "kl", "response_length", "repetition", "entropy", "ended_share")})
    metrics.update({k: last[k] for k in safety})
    if gold_scorer is not None:
        metrics.update(gold_score=last["gold_score"], gold_score_best=max(row["gold_score"] for row in result.history))
    metrics.update(iterations=len(result.history), stopped_early=result.stopped_early)
    # Which iteration's policy was written (keep: last | best) and its in-loop win rate against the start.
    metrics.update(keep=config.keep, kept_iteration=result.kept_iteration, kept_win_rate=result.kept_win_rate)
    metrics.update(train_wall_s=round(time.perf_counter() - started, 1), peak_rss_mb=round(peak_rss_mb(), 1))
    metrics["peak_rss_mb_per_process"] = [round(peak, 1) for peak in peaks]
    if usage:
        metrics["reward_usage"] = usage  # what a paid judge's ratings cost: requests, retries, tokens, price
    write_json(args.metrics, metrics)
    Checkpoints(args.checkpoint_dir, {}, accelerator).remove()


if __name__ == "__main__":
    run_stage(STAGE, main)

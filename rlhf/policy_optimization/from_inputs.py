"""The train_policy stage's work as one library call per kind of algorithm: the models, the online
reward and the prompts that the stage's inputs name, trained as params say, the policy saved.

`train_online`: PPO, PPO-Lagrangian and the critic-free algorithms (trainer.train_policy) against
`train_policy.reward`, with the gold judge beside it, the in-loop evaluation on held-out prompts,
the trackers and resumable checkpoints. `train_offline`: DPO on the comparisons snapshot (dpo.py).
Each returns the curve's rows and columns and the metrics file's content; the stage
(rlhf/stages/train_policy.py) writes them.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from accelerate.utils import gather_object, set_seed

from rlhf import chat
from rlhf.config import Params
from rlhf.errors import ConfigError
from rlhf.judges import RuleJudge, make_judge
from rlhf.machine import peak_rss_mb
from rlhf.policy_optimization.algorithms import algorithm_for
from rlhf.policy_optimization.engine import make_accelerator, offloaded, save_policy
from rlhf.policy_optimization.in_loop_eval import WinRateVsStart
from rlhf.policy_optimization.models import PolicyModels, count_parameters, critic_start
from rlhf.policy_optimization.rollout import RewardScorer
from rlhf.policy_optimization.trainer import train_policy
from rlhf.pretrained import checkpoint_hash, load_policy, load_scalar_head_model, load_tokenizer, resolve_device
from rlhf.reward_models.cost import load_cost_model
from rlhf.reward_models.ensemble import load_reward_model
from rlhf.rewards.rules import RulesReward
from rlhf.rewards.terms import online_reward, usage_of
from rlhf.snapshot import read_comparisons
from rlhf.tracking import Tracker

STAGE = "train_policy"
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


@dataclass
class PolicyInputs:
    """The stage's inputs (dvc.yaml's paths)."""

    prompts: str  # the prompts parquet (train and test splits)
    comparisons: str  # the comparisons snapshot (DPO's pairs)
    policy_dir: str  # the round's start policy
    reference_dir: str  # the KL anchor (the SFT policy)
    reward_dir: str
    cost_dir: str  # PPO-Lagrangian's cost model


@dataclass
class PolicyOutcome:
    """What the stage writes beside the policy: the curve's rows and plotted columns, the metrics."""

    history: list[dict]
    curve_columns: list[str]
    metrics: dict


def train_offline(
    params: Params, inputs: PolicyInputs, model_dir: str, live_dir: str, progress: Callable[[int, int], None]
) -> PolicyOutcome:
    """DPO: the policy from the round's start, the bootstrap policy as reference, the snapshot's pairs."""
    # Imported here: it brings in TRL, datasets and peft, which the online algorithms never use.
    from rlhf.policy_optimization.dpo import train_dpo

    config = params.train_policy
    with Tracker(
        STAGE, params.tracking, live_dir, {STAGE: config.model_dump(mode="json")}, tables=("samples",)
    ) as tracker:
        device = resolve_device(params.device)
        set_seed(params.seed)
        tokenizer = load_tokenizer(inputs.policy_dir)
        policy = load_policy(inputs.policy_dir, device)
        print(f"{STAGE}: DPO, beta {config.dpo.beta}, {count_parameters(policy)[1]:,} parameters", flush=True)
        result = train_dpo(
            policy,
            load_policy(inputs.reference_dir, device),
            tokenizer,
            read_comparisons(inputs.comparisons),
            config.dpo,
            params.seed,
            progress=progress,
            tracker=tracker,
        )
        policy.save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
    history = [{"iteration": row["step"], **row} for row in result.history]
    metrics = {"algorithm": "dpo", **result.metrics, "peak_rss_mb": round(peak_rss_mb(), 1)}
    return PolicyOutcome(history, DPO_CURVE_COLUMNS, metrics)


def train_online(
    params: Params, inputs: PolicyInputs, model_dir: str, checkpoint_dir: str, live_dir: str
) -> PolicyOutcome | None:
    """The online algorithm `train_policy.algorithm` names, in this process (one of the launcher's);
    the policy saved to `model_dir`. Returns the outcome on the main process, None on the others."""
    config = params.train_policy
    algorithm = algorithm_for(config)
    accelerator = make_accelerator(config, resolve_device(params.device))
    set_seed(params.seed)  # LoRA adapters and new heads start the same in every process and every run
    prompts = pd.read_parquet(inputs.prompts)
    tokenizer = load_tokenizer(inputs.policy_dir)
    models = load_models(params, inputs, tokenizer, accelerator.device)
    topics = {chat.to_json(c): t for c, t in zip(chat.conversations_of(prompts), topics_of(prompts))}
    scorer = online_scorer(params, inputs, tokenizer, topics, accelerator.device)
    gold_scorer = RulesReward(params.rank_responses.principles, topics) if config.gold_judge == "rules" else None
    cost_scorer = None
    if algorithm.needs_cost_model:
        cost_model, cost_tokenizer = load_cost_model(inputs.cost_dir, torch.device("cpu"))
        cost_scorer = RewardScorer(
            offloaded(cost_model, accelerator.device, config.offload_reward_model), cost_tokenizer
        )
    evaluator = in_loop_evaluator(params, prompts, accelerator.device)
    trainable, total = count_parameters(models.trained.policy)
    if accelerator.is_main_process:
        print(f"{STAGE}: policy {total:,} parameters, {trainable:,} trained; {accelerator.num_processes} process(es)")
    started = time.perf_counter()
    tracker = Tracker(
        STAGE,
        params.tracking,
        live_dir,
        {STAGE: config.model_dump(mode="json")},
        main_process=accelerator.is_main_process,
        tables=("samples",),
    )
    with tracker:
        result = train_policy(
            models,
            scorer,
            tokenizer,
            train_conversations(prompts),
            config,
            params.seed,
            row_logger(tracker, config.iterations, accelerator.is_main_process),
            accelerator=accelerator,
            checkpoint_dir=checkpoint_dir,
            fingerprint=fingerprint(params, inputs),
            cost_scorer=cost_scorer,
            gold_scorer=gold_scorer,
            evaluator=evaluator,
            log_samples=lambda iteration, rows: tracker.log_table("samples", rows, iteration),
        )
    save_policy(models, accelerator, tokenizer, model_dir)
    usage = judge_usage(scorer, accelerator)
    # every process's own peak: under ZeRO-3 / FSDP the shards make them the figure that matters
    peaks = gather_object([peak_rss_mb()])
    # Every process leaves the group together: one that exited with its gloo threads still running
    # aborted now and then ("terminate called without an active exception", about 1 FSDP run in 6).
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if not accelerator.is_main_process:
        return None
    for name, counts in usage.items():
        print(f"{STAGE}: reward {name}: " + ", ".join(f"{k} {v}" for k, v in counts.items()), flush=True)
    safety = [column for column in SAFETY_CURVE_COLUMNS if column in algorithm.logs]  # PPO-Lagrangian's
    metrics = {"algorithm": config.algorithm}
    last = result.history[-1]
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
    return PolicyOutcome(result.history, CURVE_COLUMNS + safety, metrics)


def load_models(params: Params, inputs: PolicyInputs, tokenizer, device: torch.device) -> PolicyModels:
    """The policy (and critic) on `device`; the frozen reference loaded on the CPU, then moved to the
    device or kept in CPU memory (offload_reference). The KL anchor stays the SFT policy over every
    round; with LoRA it is the round's start policy with adapters off (no second copy is held)."""
    config = params.train_policy
    critic, critic_is_reward_model = load_critic(inputs, config, tokenizer, load_tokenizer(inputs.reward_dir), device)
    policy = load_policy(inputs.policy_dir, device)
    reference = None
    if not config.lora_rank:
        reference = offloaded(load_policy(inputs.reference_dir, torch.device("cpu")), device, config.offload_reference)
    return PolicyModels.build(
        policy, critic, config, reference=reference, critic_is_reward_model=critic_is_reward_model
    )


def online_scorer(params: Params, inputs: PolicyInputs, tokenizer, topics: dict, device: torch.device):
    """`train_policy.reward`: the reward model (loaded on the CPU, then moved or offloaded), the rules,
    a reward server or a weighted sum (rlhf.rewards.terms)."""
    config = params.train_policy
    reward_tokenizer = load_tokenizer(inputs.reward_dir)

    def reward_model() -> RewardScorer:
        model = load_reward_model(inputs.reward_dir, torch.device("cpu"), reward_tokenizer.pad_token_id)
        return RewardScorer(offloaded(model, device, config.offload_reward_model), reward_tokenizer)

    return online_reward(config.reward, reward_model, params.rank_responses.principles, topics, tokenizer, device)


def row_logger(tracker: Tracker, iterations: int, main_process: bool) -> Callable[[dict], None]:
    """The trainer's `log`: each iteration's line on stdout and its row to the trackers (main process)."""

    def log(row: dict) -> None:
        if not main_process:
            return
        if "resumed_from" in row:
            print(f"{STAGE}: resumed after iteration {row['resumed_from']} from {row['checkpoint']}", flush=True)
            tracker.resumed_after(row["resumed_from"], row["history"])
            return
        if "stopped_early" in row:
            print(f"{STAGE}: stopped early at iteration {row['iteration']}: {row['stopped_early']}", flush=True)
            return
        print(
            f"{STAGE}: iteration {row['iteration']}/{iterations} "
            f"score {row['score']:+.3f} kl {row['kl']:.3f} length {row['response_length']:.1f} "
            f"repetition {row['repetition']:.3f} entropy {row['entropy']:.3f} clip {row['clip_fraction']:.3f}"
            + (f" cost {row['cost']:.3f} lambda {row['lagrange_multiplier']:.2f}" if "cost" in row else "")
            + (f" win rate vs start {row['eval_win_rate']:.3f}" if "eval_win_rate" in row else ""),
            flush=True,
        )
        tracker.log_metrics(row, row["iteration"])

    return log


def fingerprint(params: Params, inputs: PolicyInputs) -> dict:
    """What a checkpoint must match to be resumed: the train_policy settings, the seed and the inputs."""
    return {
        "train_policy": params.train_policy.model_dump(mode="json"),
        "seed": params.seed,
        "policy": checkpoint_hash(inputs.policy_dir),
        "reference": checkpoint_hash(inputs.reference_dir),
        "reward": checkpoint_hash(inputs.reward_dir),
        "cost": checkpoint_hash(inputs.cost_dir) if params.train_policy.algorithm == "ppo_lagrangian" else None,
        "prompts": hashlib.sha256(Path(inputs.prompts).read_bytes()).hexdigest()[:16],
    }


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


def load_critic(inputs: PolicyInputs, config, tokenizer, reward_tokenizer, device):
    """PPO's critic and whether it starts as the reward model (critic_start); (None, False) for the
    critic-free algorithms, which load nothing of one."""
    if not algorithm_for(config).needs_critic:
        return None, False
    reward_alone = [(term.source, term.weight) for term in config.reward] == [("reward_model", 1.0)]
    critic_dir = critic_start(
        Path(inputs.policy_dir), Path(inputs.reward_dir), tokenizer, reward_tokenizer, reward_alone
    )
    return load_scalar_head_model(critic_dir, device, tokenizer.pad_token_id), critic_dir == Path(inputs.reward_dir)

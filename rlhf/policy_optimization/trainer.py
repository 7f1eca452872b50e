"""The PPO loop for RLHF, top to bottom: sample -> score -> KL -> GAE -> whiten -> update.

The same loop runs the critic-free algorithms (train_policy.algorithm grpo | rloo | reinforce_pp):
G responses per prompt, no critic (none built, prepared, optimised or checkpointed; no value loss),
the advantages of rlhf/policy_optimization/estimators.py (chosen in rollout.estimate_advantages) and their loss
(chosen in `policy_objective`): the clipped surrogate aggregated as params say, plus beta * k3 for
GRPO. Everything else (sampler, resume, monitors, LoRA, in-loop evaluation, trackers) is shared.

InstructGPT (Ouyang et al. 2022) and "The N Implementation Details of RLHF with PPO" (Huang et al.
2024): RM score at the last token, per-token k1 KL penalty against the frozen reference
with a fixed or adaptive coefficient, missing-EOS penalty, score normalisation, GAE, whitened
advantages, clipped surrogate and clipped value loss, several epochs over shuffled minibatches with
gradient accumulation and clipping, an LR schedule, entropy and approximate-KL logging.

Where this departs from the papers:
  - The critic is a separate network initialised from the reward model (as in the N-details paper
    and TRL's PPOv2), not a head on the policy; both train under one optimizer (a parameter group
    each) and their gradients are clipped separately.
  - The policy's rollout log-probs come from the sampling loop, not from a second forward pass
    (in fp32 they agree with a full forward to float rounding; under bf16 they drift, which
    `recompute_old_logprobs` and `rollout_correction` address).
  - Every loss term of a minibatch is divided by counts over the whole minibatch (all its
    micro-batches and processes: estimators.BatchSize), so its gradient is the same at any
    micro-batch size and process count.
  - Dropout is off in every model (detail 1 of the N-details paper).
  - The adaptive KL controller updates once per iteration with the iteration's mean sequence KL.
  - Whitening, score normalisation and logged statistics use the global batch across processes.
  - PPO-Lagrangian (Safe RLHF): one critic learns the combined return of (score - lambda cost) /
    (1 + lambda) - beta KL, where Dai et al. keep a reward critic and a cost critic and combine
    advantages; the KL's weight stays beta whatever lambda is, as in their code.

Each iteration's row also says what the iteration did: phase times (generation_seconds,
scoring_seconds, reference_seconds, update_seconds, within iteration_seconds), tokens_per_second,
peak memory, policy_grad_norm, the log-prob drift; every `eval_every` iterations the in-loop win
rate against the start (eval_win_rate, in_loop_eval.py), which `keep: best` chooses the policy by.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import random
import resource
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedType, gather_object, set_seed
from transformers import PreTrainedTokenizerBase, get_scheduler

from rlhf import chat
from rlhf.config import TrainPolicyParams
from rlhf.errors import ConfigError, TrainingStopped
from rlhf.policy_optimization import core, estimators
from rlhf.policy_optimization.checkpoint import Checkpoints
from rlhf.policy_optimization.estimators import BatchSize
from rlhf.policy_optimization.in_loop_eval import WinRateVsStart
from rlhf.policy_optimization.models import PPOModels
from rlhf.policy_optimization.rollout import (
    RewardScorer,
    Rollout,
    ScoreNormalizer,
    collect_rollout,
    device_clock,
    sample_responses,
)
from rlhf.rewards.rules import RulesReward
from rlhf.sampling import CompiledSampler


@dataclass
class PPOResult:
    history: list[dict]  # one row of statistics per iteration
    stopped_early: str | None = None  # which reward-hacking monitor ended the run, if one did
    resumed_from: int | None = None  # the iteration of the checkpoint this run resumed from
    kept_iteration: int | None = None  # the iteration whose policy `models` holds at the end (keep: last | best)
    kept_win_rate: float | None = None  # its in-loop win rate; None where it was not evaluated


@dataclass
class TrainerState:
    """What a checkpoint holds beyond weights, optimizer and global RNGs (see checkpoint.py)."""

    kl: core.FixedKLController
    normalizer: ScoreNormalizer
    prompt_rng: random.Random
    shuffle: torch.Generator
    iteration: int = 0
    history: list[dict] = field(default_factory=list)
    lagrange: core.LagrangeMultiplier | None = None  # PPO-Lagrangian only
    # keep: best: {"iteration", "win_rate", "weights"}: the best in-loop evaluation so far and the
    # policy's trained parameters then (on the CPU); checkpointed with the rest, so it survives a resume.
    best: dict | None = None

    def state_dict(self) -> dict:
        return {
            "lagrange": self.lagrange.state_dict() if self.lagrange else None,
            "kl": self.kl.state_dict(),
            "normalizer": self.normalizer.state_dict(),
            # each process draws its own prompts; accelerate writes this from the main process only
            "prompt_rng": gather_object([self.prompt_rng.getstate()]),  # one per process, in rank order
            "shuffle": self.shuffle.get_state(),
            "iteration": self.iteration,
            "history": self.history,
            "best": self.best,
        }

    def load_state_dict(self, state: dict) -> None:
        self.kl.load_state_dict(state["kl"])
        self.normalizer.load_state_dict(state["normalizer"])
        prompt_rng = state["prompt_rng"]  # a list, one per process (a tuple in checkpoints of one process before)
        if isinstance(prompt_rng, list):
            prompt_rng = prompt_rng[PartialState().process_index]
        self.prompt_rng.setstate(prompt_rng)
        self.shuffle.set_state(state["shuffle"])
        self.iteration, self.history = state["iteration"], state["history"]
        self.best = state.get("best")
        if self.lagrange and state.get("lagrange"):
            self.lagrange.load_state_dict(state["lagrange"])


SHARDED_LAUNCHERS = ("deepspeed_zero2", "deepspeed_zero3", "fsdp")


def make_accelerator(params: TrainPolicyParams, device: torch.device) -> Accelerator:
    bf16 = params.mixed_precision == "bf16" or (params.mixed_precision == "auto" and device.type == "cuda")
    sharded_on_cpu = device.type == "cpu" and params.launcher in SHARDED_LAUNCHERS and "WORLD_SIZE" in os.environ
    if sharded_on_cpu:
        start_sharded_engine_on_cpu()
    accelerator = Accelerator(
        cpu=device.type == "cpu" and not sharded_on_cpu,
        mixed_precision="bf16" if bf16 else "no",
        gradient_accumulation_steps=params.minibatch_size // params.micro_batch,
    )
    if accelerator.state.deepspeed_plugin is not None:  # no dataloader to infer the batch sizes from
        accelerator.state.deepspeed_plugin.deepspeed_config.update(
            train_micro_batch_size_per_gpu=params.micro_batch,
            train_batch_size=params.minibatch_size * accelerator.num_processes,
            gradient_clipping=params.max_grad_norm,  # one norm over policy and critic together (DeepSpeed's own)
        )
        if not accelerator.state.deepspeed_plugin.zero3_init_flag:
            # accelerate registers its config with transformers whatever zero3_init_flag says, and
            # transformers then loads every model already partitioned: the frozen reference and the
            # reward model too, which no engine gathers. They stay whole; the engine shards the trained.
            from transformers.integrations import unset_hf_deepspeed_config

            unset_hf_deepspeed_config()
    return accelerator


def offloaded(model: torch.nn.Module, device: torch.device, offload: bool) -> torch.nn.Module:
    """With `offload`, a frozen model (loaded on the CPU) kept in CPU memory and moved whole to
    `device` only for each forward, its outputs returned where its inputs came from; else the model
    on `device`. The update phase, where a policy's memory peaks (weights, gradients, optimizer
    state, activations), then has the device to itself. Nothing moves on a CPU run."""
    if not offload or device.type == "cpu":
        return model.to(device)
    from accelerate.utils import send_to_device

    model.to("cpu")
    callers: list[torch.device] = []

    def bring(module, args, kwargs):
        inputs = [t for t in [*args, *kwargs.values()] if torch.is_tensor(t)]
        callers.append(inputs[0].device if inputs else device)
        module.to(device)
        return send_to_device(args, device), send_to_device(kwargs, device)

    def send_back(module, args, kwargs, output):
        module.to("cpu")
        return send_to_device(output, callers.pop())

    model.register_forward_pre_hook(bring, with_kwargs=True)
    model.register_forward_hook(send_back, with_kwargs=True)
    return model


def fsdp_units(trained: torch.nn.Module) -> list[str]:
    """The classes FSDP shards as units (accelerate reads `_no_split_modules`): each model's layers and
    the policy itself, whose own forward generation calls. The critic's other weights (embeddings,
    value head) stay with the root unit: critic_values calls its parts, never its forward, and its
    backbone's class may be the policy's, whose embeddings are tied to the policy's head."""
    names = {type(trained.policy).__name__, *(trained.policy._no_split_modules or [])}
    if trained.critic is not None:
        names |= set(trained.critic._no_split_modules or [])
    return sorted(names)


def start_sharded_engine_on_cpu() -> None:
    """The process group over gloo for DeepSpeed or FSDP on CPU, before the Accelerator is built.

    accelerate 1.15 picks no backend for a non-CPU launch without a GPU (so it counts one process)
    and turns on FSDP only over GPU-like process groups; `Accelerator(cpu=True)` would give plain
    DDP. So the shared state is started over gloo, and for FSDP marked as a multi-device run."""
    state = PartialState(backend="gloo")
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        state.distributed_type = DistributedType.MULTI_GPU  # only so that AcceleratorState turns FSDP on


def parameter_groups(models: PPOModels, params: TrainPolicyParams) -> list[dict]:
    """The policy's trained parameters, then the critic's with their own learning rate (PPO only:
    the critic-free algorithms have no critic, so their optimizer and checkpoints hold one group)."""
    groups = [
        {"params": [p for p in models.trained.policy.parameters() if p.requires_grad], "lr": params.learning_rate}
    ]
    if models.trained.critic is not None:
        critic_params = [p for p in models.trained.critic.parameters() if p.requires_grad]
        groups.append({"params": critic_params, "lr": params.value_learning_rate})
    return groups


def kl_controller(params: TrainPolicyParams) -> core.FixedKLController:
    if params.kl_controller == "adaptive":
        return core.AdaptiveKLController(params.kl_coef, params.target_kl, params.kl_horizon)
    return core.FixedKLController(params.kl_coef)


def train_ppo(
    models: PPOModels,
    scorer: RewardScorer,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[chat.Conversation],
    params: TrainPolicyParams,
    seed: int,
    log: Callable[[dict], None] = print,
    accelerator: Accelerator | None = None,
    checkpoint_dir: str | Path | None = None,
    fingerprint: dict | None = None,
    cost_scorer: RewardScorer | None = None,
    gold_scorer: RulesReward | None = None,
    evaluator: WinRateVsStart | None = None,
    log_samples: Callable[[int, list[dict]], None] | None = None,
) -> PPOResult:
    """Run PPO on `models` in place; resumes from `checkpoint_dir` when it holds this run's checkpoint.

    With `cost_scorer` (algorithm ppo_lagrangian) the reward is penalised by lambda times the cost
    model's P(unsafe), and lambda follows the measured cost toward `params.safety.cost_limit`.
    With `evaluator`, every `params.eval_every` iterations and at the last the row gets the win rate
    against the start (eval_win_rate); with `params.keep == "best"` `models` ends holding the policy
    of the best one. `log_samples(iteration, rows)` gets `params.log_samples` samples (prompt,
    response, reward, kl) every `params.log_samples_every` iterations, on the main process only."""
    device = next(models.trained.parameters()).device
    accelerator = accelerator or make_accelerator(params, device)
    if params.keep == "best" and (evaluator is None or params.eval_every == 0):
        raise ValueError("keep: best needs the in-loop evaluation: an evaluator and eval_every > 0")
    if params.keep == "best" and _shards_weights(accelerator):
        raise ConfigError(
            f"params.yaml: train_policy.keep: best is not supported under {params.launcher} (sharded weights)"
        )
    set_seed(seed, device_specific=True)  # each process samples different responses
    optimizer = torch.optim.Adam(parameter_groups(models, params), eps=1e-5)  # eps as in the N-details paper
    schedule = (
        "constant_with_warmup" if params.lr_schedule == "constant" and params.warmup_iterations else params.lr_schedule
    )
    scheduler = get_scheduler(schedule, optimizer, params.warmup_iterations, params.iterations)
    models.trained.train()
    if params.compile_generation:
        models.compiled_sampler = CompiledSampler(models.trained.policy)
    state = TrainerState(
        kl_controller(params),
        ScoreNormalizer(params.score_normalization),
        random.Random(f"{seed}-{accelerator.process_index}"),
        torch.Generator().manual_seed(seed),
    )
    if cost_scorer is not None:
        safety = params.safety
        state.lagrange = core.LagrangeMultiplier(
            safety.lagrange_init, safety.cost_limit, safety.lagrange_lr, safety.lagrange_max
        )
    accelerator.register_for_checkpointing(state, scheduler)
    local_batch, repeats = params.batch_size // accelerator.num_processes, params.responses_per_prompt

    def sample_prompts() -> list[chat.Conversation]:
        """local_batch responses' prompts: each drawn prompt G times in a row (prompt-major; G = 1 for PPO)."""
        drawn = [state.prompt_rng.choice(prompts) for _ in range(local_batch // repeats)]
        return [prompt for prompt in drawn for _ in range(repeats)]

    checkpoints = Checkpoints(checkpoint_dir, fingerprint or {}, accelerator) if checkpoint_dir is not None else None
    latest = checkpoints.latest() if checkpoints else None
    if latest is None and params.score_normalization != "none":
        # initial: these are the statistics; running: they seed the running ones. Either way the
        # critic copied from the reward model starts on the scale its returns will be on. Before the
        # engine wraps the models: ZeRO copies the weights it will update (its fp32 master) at prepare.
        calibrate(models, scorer, state.normalizer, tokenizer, sample_prompts(), params, accelerator)
        if models.critic_is_reward_model:
            models.normalize_critic_head(state.normalizer.mean, state.normalizer.std)
    if accelerator.distributed_type == DistributedType.FSDP:
        models.trained._no_split_modules = fsdp_units(models.trained)
    trained, optimizer = accelerator.prepare(models.trained, optimizer)
    models.prepared = trained
    if accelerator.is_fsdp2:
        # FSDP2 takes the first unit to run for its root; the rollout runs the policy and the critic's
        # parts before the update runs the whole, so the whole is made the root now (no public call does).
        trained._get_fsdp_state()._lazy_init()
    update_forward = torch.compile(trained) if params.compile else trained
    if _shards_weights(accelerator):
        models.generation_context = functools.partial(gathered, accelerator, models.trained.policy)
    resumed_from = None
    if latest is not None:
        accelerator.load_state(str(latest))
        resumed_from = state.iteration
        # The rows before the checkpoint too: a tracker whose files a re-run cleared logs them again.
        log({"resumed_from": resumed_from, "checkpoint": str(latest), "history": list(state.history)})
    elif checkpoints:
        checkpoints.start_fresh()
    recompute = None
    if params.recompute_old_logprobs:
        recompute = functools.partial(recompute_logprobs, update_forward, params)

    stopped_early = None
    for iteration in range(state.iteration + 1, params.iterations + 1):
        iteration_started = device_clock(device)
        reset_peak_memory(device)
        batch_prompts = sample_prompts()
        with accelerator.autocast(), whole_for_rollout(models):  # bf16 on CUDA, as the update: log-probs match
            rollout, stats = collect_rollout(
                models,
                scorer,
                state.normalizer,
                tokenizer,
                batch_prompts,
                params,
                state.kl.value,
                all_reduce=lambda t: accelerator.reduce(t, reduction="sum"),
                gather=accelerator.gather,
                cost_scorer=cost_scorer,
                lagrange=state.lagrange,
                gold_scorer=gold_scorer,
                recompute_logprobs=recompute,
            )
        stats["rollout_seconds"] = device_clock(device) - iteration_started
        stop_if_unsafe(stats, iteration, params, checkpoints)
        update_started = device_clock(device)
        stats.update(
            ppo_update(
                trained,
                update_forward,
                accelerator,
                optimizer,
                rollout,
                params,
                state.shuffle,
                checkpoints,
                kl_coef=state.kl.value,
            )
        )
        stats["update_seconds"] = device_clock(device) - update_started
        stats.update(throughput_and_memory(stats, device_clock(device) - iteration_started, device))
        stop_if_unsafe(stats, iteration, params, checkpoints)
        stats["kl_coef"] = state.kl.value
        stats["learning_rate"] = scheduler.get_last_lr()[0]
        state.kl.update(stats["kl"], params.batch_size)
        if state.lagrange is not None:
            state.lagrange.update(stats["cost"])
        scheduler.step()
        row = {"iteration": iteration, **{k: round(v, 6) for k, v in stats.items()}}
        stopped_early = reward_hacking_alarm(stats, params) or gold_plateau([*state.history, row], params)
        if evaluator is not None and evaluation_due(iteration, params, stopped_early):
            row.update(evaluate_in_loop(evaluator, models, tokenizer, params, accelerator))
            if params.keep == "best":
                remember_if_best(state, models, iteration, row["eval_win_rate"])
        state.history.append(row)
        state.iteration = iteration
        log(row)
        if log_samples is not None and _every(iteration, params.log_samples_every) and accelerator.is_main_process:
            log_samples(iteration, samples_table(batch_prompts, rollout, tokenizer, params.log_samples))
        if stopped_early:
            log({"stopped_early": stopped_early, "iteration": iteration})
            break
        if checkpoints and (iteration % params.checkpoint_every == 0 or iteration == params.iterations):
            checkpoints.save(iteration)
    kept_iteration, kept_win_rate = keep_policy(models, state, params)
    return PPOResult(state.history, stopped_early, resumed_from, kept_iteration, kept_win_rate)


def _every(iteration: int, every: int) -> bool:
    return every > 0 and iteration % every == 0


def evaluation_due(iteration: int, params: TrainPolicyParams, stopping: str | None) -> bool:
    """Every `eval_every` iterations, and at the last one (the end of the run, or an early stop)."""
    return params.eval_every > 0 and (
        _every(iteration, params.eval_every) or iteration == params.iterations or bool(stopping)
    )


def evaluate_in_loop(evaluator: WinRateVsStart, models, tokenizer, params, accelerator: Accelerator) -> dict:
    """The win rate against the start over every process's share of the held-out prompts."""
    device = next(models.trained.parameters()).device
    started = device_clock(device)
    with torch.no_grad(), accelerator.autocast():
        wins = evaluator.wins(models, tokenizer, params, accelerator.process_index, accelerator.num_processes)
    total = accelerator.reduce(torch.tensor([sum(wins), len(wins)], dtype=torch.float64, device=device), "sum")
    return {
        "eval_win_rate": round(total[0].item() / max(total[1].item(), 1.0), 6),
        "eval_seconds": round(device_clock(device) - started, 6),
    }


def remember_if_best(state: TrainerState, models: PPOModels, iteration: int, win_rate: float) -> None:
    """keep: best: a copy of the policy's trained parameters when this evaluation beats every earlier
    one. A tie keeps the earlier iteration: as good by the judge, and nearer the start policy.
    Under LoRA only the adapters train, so only they are copied."""
    if state.best is not None and win_rate <= state.best["win_rate"]:
        return
    weights = {name: p.detach().to("cpu", copy=True) for name, p in models.policy.named_parameters() if p.requires_grad}
    state.best = {"iteration": iteration, "win_rate": win_rate, "weights": weights}


@torch.no_grad()
def keep_policy(models: PPOModels, state: TrainerState, params: TrainPolicyParams) -> tuple[int | None, float | None]:
    """Leave in `models` the policy `params.keep` asks for; returns (its iteration, its in-loop win rate)."""
    if params.keep == "best" and state.best is not None:
        for name, parameter in models.policy.named_parameters():
            if name in state.best["weights"]:
                parameter.copy_(state.best["weights"][name])
        return state.best["iteration"], state.best["win_rate"]
    if not state.history:
        return None, None
    return state.history[-1]["iteration"], state.history[-1].get("eval_win_rate")


def samples_table(prompts: list[chat.Conversation], rollout: Rollout, tokenizer, count: int) -> list[dict]:
    """The first `count` samples of this process's rollout, as TRL logs completions. reward is the
    reward model's raw score (before normalisation and the missing-EOS penalty); kl is the response's
    sequence KL to the reference, by params.kl_estimator."""
    responses = tokenizer.batch_decode(rollout.response_ids[:count], skip_special_tokens=True)
    return [
        {
            "prompt": chat.transcript(chat.as_conversation(prompt)),
            "response": response.strip(),
            "reward": reward,
            "kl": kl,
        }
        for prompt, response, reward, kl in zip(prompts, responses, rollout.raw_scores.tolist(), rollout.kl.tolist())
    ]


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":  # so that peak_cuda_memory_mb is this iteration's peak
        torch.cuda.reset_peak_memory_stats(device)


def throughput_and_memory(stats: dict, seconds: float, device: torch.device) -> dict:
    """iteration_seconds (rollout and update), tokens_per_second (generated tokens, all processes),
    peak_rss_mb (this process's peak resident memory since it started: the OS keeps no per-iteration
    peak) and, on CUDA, peak_cuda_memory_mb (torch.cuda.max_memory_allocated in this iteration)."""
    figures = {
        "iteration_seconds": seconds,
        "tokens_per_second": stats["generated_tokens"] / max(seconds, 1e-9),
        "peak_rss_mb": peak_rss_mb(),
    }
    if device.type == "cuda":
        figures["peak_cuda_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return figures


def peak_rss_mb() -> float:
    """This process's peak resident memory since it started, in MiB (ru_maxrss: KiB on Linux, bytes on macOS)."""
    kilobytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform == "darwin" else 1)
    return kilobytes / 1024


def calibrate(models, scorer, normalizer, tokenizer, prompts, params, accelerator) -> None:
    """Score one batch of the starting policy's responses: the 'initial' normalisation statistics."""
    with accelerator.autocast():
        sample = sample_responses(models, tokenizer, prompts, params)
        normalizer.observe(accelerator.gather(scorer(prompts, sample.texts).to(sample.response_ids.device)))


@torch.no_grad()
def recompute_logprobs(forward, params: TrainPolicyParams, query_ids, query_mask, response_ids, mask) -> torch.Tensor:
    """log pi_old of a rollout's tokens by the update's own forward, in micro-batches.  (B, T)

    Under bf16 the sampler's log-probs can differ from these by up to ~0.1 nats per token, against
    a clip range of 0.2, so the ratio would start off 1 before any update."""
    rows = []
    for start in range(0, len(query_ids), params.micro_batch):
        part = slice(start, start + params.micro_batch)
        logits, _ = forward(query_ids[part], query_mask[part], response_ids[part], mask[part], params.temperature)
        rows.append(torch.log_softmax(logits.float(), -1).gather(-1, response_ids[part].unsqueeze(-1)).squeeze(-1))
    return torch.cat(rows)


@dataclass(frozen=True)
class MinibatchCounts:
    """The whole minibatch's counts (every micro-batch, every process) that its loss terms are
    divided by: `policy` over the responses in the policy-gradient term (dynamic sampling drops
    some), `all` over every response (GRPO's KL term, the value loss, the entropy)."""

    policy: BatchSize
    all: BatchSize

    @classmethod
    def of(cls, rollout: Rollout, all_reduce, rows: torch.Tensor | None = None) -> MinibatchCounts:
        """The counts of `rollout`'s rows at `rows` (all of them by default), read in place."""
        rows = slice(None) if rows is None else rows
        return cls(BatchSize.of(rollout.policy_mask[rows], all_reduce), BatchSize.of(rollout.mask[rows], all_reduce))


def policy_objective(
    params: TrainPolicyParams,
    logprobs: torch.Tensor,
    mb: Rollout,
    kl_coef: float,
    counts: MinibatchCounts | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The policy's loss on a micro-batch, as the algorithm defines it, and its statistics.

    Every algorithm: the clipped surrogate per token (estimators.clipped_surrogate; with DAPO's
    clip-higher for the critic-free ones), times the rollout correction's weights where one is
    configured, aggregated over the responses in the policy-gradient term as `loss_aggregation`
    says (ppo, ppo_lagrangian: token_mean). GRPO adds beta * k3(pi_theta, pi_ref) over every
    response (Shao et al. 2024, eq. 3), its KL to the reference, which the others carry in their
    rewards instead. `counts`: the whole minibatch's (default: this micro-batch is the minibatch)."""
    counts = counts or MinibatchCounts.of(mb, None)
    in_policy_term = mb.policy_mask
    losses = estimators.clipped_surrogate(
        logprobs, mb.logprobs, mb.advantages, params.clip_range, params.clip_range_high
    )
    if mb.correction is not None:
        losses = losses * mb.correction
    log_ratio = logprobs - mb.logprobs
    ratio, high = torch.exp(log_ratio), params.clip_range_high or params.clip_range
    clipped = -mb.advantages * torch.clamp(ratio, 1.0 - params.clip_range, 1.0 + high) > -mb.advantages * ratio
    stats = {
        "clip_fraction": core.masked_mean(clipped.float(), in_policy_term),
        "approx_kl": core.masked_mean(0.5 * log_ratio**2, mb.mask),  # Schulman's k2 estimator of KL(old || new)
    }
    loss = estimators.aggregate(losses, in_policy_term, params.loss_aggregation, params.max_new_tokens, counts.policy)
    if params.algorithm == "grpo":
        stats["kl_loss"] = estimators.k3_kl_loss(
            logprobs, mb.ref_logprobs, mb.mask, params.loss_aggregation, params.max_new_tokens, counts.all
        )
        loss = loss + kl_coef * stats["kl_loss"]
    return loss, stats


def ppo_update(
    model,
    forward,
    accelerator,
    optimizer,
    rollout: Rollout,
    params: TrainPolicyParams,
    shuffle,
    checkpoints,
    kl_coef: float = 0.0,
):
    """Several epochs of clipped PPO over shuffled minibatches, accumulating over micro-batches.

    `model` is the prepared policy+critic module (policy alone for the critic-free algorithms);
    `forward` is it or its torch.compile'd wrapper. kl_coef: GRPO's beta on its k3 loss term.
    Before the first optimizer step the policy is the one that sampled, so the micro-batches seen
    until then measure how far the sampler's log-probs sit from the update's own forward
    (`rollout_logprob_drift`, mean absolute difference per token; bf16 makes it non-zero on CUDA).
    """
    inner = accelerator.unwrap_model(model)
    totals: dict[str, float] = {}
    micro_steps = 0
    drift, drift_tokens, stepped = 0.0, 0.0, False
    # accelerate divides each micro-batch's loss by the accumulation steps and DDP averages the
    # processes' gradients; the losses here are already sums over the whole minibatch's counts, so
    # this factor undoes both and the minibatch's gradient is the same however it is split.
    unsplit = accelerator.gradient_accumulation_steps * accelerator.num_processes
    all_reduce = lambda t: accelerator.reduce(t, reduction="sum")  # noqa: E731
    for _ in range(params.ppo_epochs):
        order = torch.randperm(len(rollout.scores), generator=shuffle).to(rollout.scores.device)
        for minibatch_start in range(0, len(order), params.minibatch_size):
            minibatch = order[minibatch_start : minibatch_start + params.minibatch_size]
            counts = MinibatchCounts.of(rollout, all_reduce, minibatch)  # not a copy of the minibatch's tensors
            for start in range(0, len(minibatch), params.micro_batch):
                mb = rollout.minibatch(minibatch[start : start + params.micro_batch])
                with accelerator.accumulate(model):
                    logits, values = forward(mb.query_ids, mb.query_mask, mb.response_ids, mb.mask, params.temperature)
                    all_logprobs = torch.log_softmax(logits.float(), dim=-1)  # (B, T, V), shared with the entropy
                    logprobs = all_logprobs.gather(-1, mb.response_ids.unsqueeze(-1)).squeeze(-1)
                    if not stepped:
                        drift += ((logprobs.detach() - mb.logprobs).abs() * mb.mask).sum().item()
                        drift_tokens += mb.mask.sum().item()
                    pg_loss, step = policy_objective(params, logprobs, mb, kl_coef, counts)
                    loss_terms = {"policy_loss": pg_loss}
                    loss = pg_loss
                    # Differentiated only when it is in the loss: at entropy_coef 0 the update does no more work.
                    with torch.set_grad_enabled(bool(params.entropy_coef)):
                        token_entropy = core.masked_mean(core.entropy(all_logprobs), mb.mask, counts.all.tokens)
                    if params.entropy_coef:  # Schulman et al. 2017, eq. 9: L = L_clip - c2 * S[pi]
                        loss_terms["entropy_bonus"] = -params.entropy_coef * token_entropy
                        loss = loss + loss_terms["entropy_bonus"]
                    if values is not None:  # PPO's critic; the critic-free algorithms have no value loss
                        loss_terms["value_loss"] = core.value_loss(
                            values, mb.values, mb.returns, mb.mask, params.value_clip_range, counts.all.tokens
                        )
                        loss = loss + params.vf_coef * loss_terms["value_loss"]
                    if not torch.isfinite(loss):  # before the step: the weights stay as the last good ones
                        where = checkpoints.latest() if checkpoints else None
                        parts = ", ".join(
                            f"{name.removesuffix('_loss')} {value.item()}" for name, value in loss_terms.items()
                        )
                        raise TrainingStopped(
                            f"PPO loss is {loss.item()} ({parts}); "
                            f"stopped before the optimizer step; last good checkpoint: {where or 'none'}"
                        )
                    accelerator.backward(loss * unsplit)
                    if accelerator.sync_gradients:
                        for name, module in (("policy_grad_norm", inner.policy), ("critic_grad_norm", inner.critic)):
                            if module is None:
                                continue
                            norm = _clip(accelerator, module, params.max_grad_norm)
                            if norm is not None:  # DeepSpeed clips inside its engine and reports nothing here
                                step[name] = norm
                    stepped = stepped or accelerator.sync_gradients
                    optimizer.step()
                    optimizer.zero_grad()
                step["entropy"] = token_entropy.detach()
                step.update(loss_terms)
                for key, value in step.items():
                    totals[key] = totals.get(key, 0.0) + (value.item() if torch.is_tensor(value) else value)
                micro_steps += 1
    return {
        **logged_means(totals, micro_steps, params, accelerator.num_processes),
        "update_logprob_drift": drift / max(drift_tokens, 1.0),
    }


# Logged terms that are a micro-batch's share of its minibatch's value (sums over the minibatch's counts).
MINIBATCH_SHARES = ("policy_loss", "value_loss", "entropy_bonus", "entropy", "kl_loss")


def logged_means(totals: dict[str, float], micro_steps: int, params: TrainPolicyParams, processes: int) -> dict:
    """Per-update means of the summed statistics: a minibatch's loss terms are the sum of its
    micro-batches' shares (times the processes, each holding an equal share), averaged over
    optimizer steps; grad norms are per optimizer step; the rest (clip fraction, approx KL) are
    micro-batch means."""
    optimizer_steps = max(micro_steps // (params.minibatch_size // params.micro_batch), 1)
    means = {}
    for key, value in totals.items():
        if key in MINIBATCH_SHARES:
            means[key] = value * processes / optimizer_steps
        elif key.endswith("grad_norm"):
            means[key] = value / optimizer_steps
        else:
            means[key] = value / max(micro_steps, 1)
    return means


def _clip(accelerator: Accelerator, module: torch.nn.Module, max_norm: float) -> float | None:
    norm = accelerator.clip_grad_norm_([p for p in module.parameters() if p.requires_grad], max_norm)
    return None if norm is None else float(norm)


def stop_if_unsafe(stats: dict, iteration: int, params: TrainPolicyParams, checkpoints: Checkpoints | None) -> None:
    """NaN or inf anywhere, or KL over the configured ceiling, ends the run with a clear message."""
    where = (checkpoints.latest() if checkpoints else None) or "none"
    for name, value in stats.items():
        if not math.isfinite(value):
            raise TrainingStopped(f"iteration {iteration}: {name} is {value}; last good checkpoint: {where}")
    if params.max_kl is not None and stats.get("kl", 0.0) > params.max_kl:
        raise TrainingStopped(
            f"iteration {iteration}: KL {stats['kl']:.3f} is above train_policy.max_kl = {params.max_kl}; "
            f"last good checkpoint: {where}"
        )


def reward_hacking_alarm(stats: dict, params: TrainPolicyParams) -> str | None:
    """The first monitor over its early-stop threshold, as a sentence; None when all are within."""
    limits = {
        "kl": params.early_stop_kl,
        "repetition": params.early_stop_repetition,
        "response_length": params.early_stop_response_length,
    }
    for name, limit in limits.items():
        if limit is not None and stats[name] > limit:
            return f"{name} {stats[name]:.3f} passed early_stop_{name} = {limit}"
    return None


def gold_plateau(history: list[dict], params: TrainPolicyParams) -> str | None:
    """A sentence when the gold score has not passed its best for `early_stop_gold_patience`
    iterations: past that point more proxy reward no longer buys gold (Gao et al. 2022)."""
    patience = params.early_stop_gold_patience
    golds = [row["gold_score"] for row in history if "gold_score" in row]
    if patience is None or len(golds) <= patience:
        return None
    best = max(range(len(golds)), key=golds.__getitem__)
    if len(golds) - 1 - best >= patience:
        return f"gold score {golds[-1]:.3f} has not passed its best {golds[best]:.3f} for {patience} iterations"
    return None


def save_policy(models: PPOModels, accelerator: Accelerator, tokenizer, directory: str | Path) -> None:
    """Write the trained policy as a plain transformers model: LoRA merged, ZeRO-3 / FSDP shards gathered."""
    accelerator.wait_for_everyone()
    state = accelerator.get_state_dict(models.prepared) if _shards_weights(accelerator) else None
    if accelerator.is_main_process:
        policy = models.trained_policy()
        if state is not None:
            state = {k.removeprefix("policy."): v for k, v in state.items() if k.startswith("policy.")}
        policy.save_pretrained(directory, state_dict=state)
        tokenizer.save_pretrained(directory)
    accelerator.wait_for_everyone()


@contextlib.contextmanager
def whole_for_rollout(models: PPOModels):
    """FSDP2 gathers a unit's weights when that unit's own forward runs; the rollout reads the
    critic's embeddings and value head, which belong to the root unit, without the root's forward, so
    the root's own weights are gathered for the rollout (the layers still gather one at a time)."""
    root = models.prepared if _is_fsdp_unit(models.prepared) else None
    if root is not None:
        root.unshard()
    try:
        yield
    finally:
        if root is not None:
            root.reshard()


def _is_fsdp_unit(module: torch.nn.Module | None) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def _zero_stage(accelerator: Accelerator) -> int:
    plugin = accelerator.state.deepspeed_plugin
    return plugin.zero_stage if plugin is not None else 0


def _shards_weights(accelerator: Accelerator) -> bool:
    """ZeRO-3 and FSDP hold a shard of each trained weight per process; ZeRO-2 and DDP hold them whole."""
    return _zero_stage(accelerator) == 3 or accelerator.distributed_type == DistributedType.FSDP


@contextlib.contextmanager
def gathered(accelerator: Accelerator, module: torch.nn.Module):
    """`module`'s whole weights in every process for the block: ZeRO-3 gathers its shards; FSDP2
    keeps each layer's gathered weights across the block's forwards (generation's decode steps)
    instead of gathering them again per step, then frees them. Nothing to do under the other engines."""
    if _zero_stage(accelerator) == 3:
        import deepspeed  # only present where ZeRO is configured

        with deepspeed.zero.GatheredParameters(list(module.parameters())):
            yield
        return
    units = [m for m in module.modules() if _is_fsdp_unit(m)] if accelerator.is_fsdp2 else []
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()
            unit.set_reshard_after_forward(True, recurse=False)

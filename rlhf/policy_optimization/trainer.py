"""The online RL loop, top to bottom: sample -> score -> KL -> advantages -> update.

One loop for every online algorithm (train_policy.algorithm ppo | ppo_lagrangian | grpo | rloo |
reinforce_pp): what differs, the advantages, the loss, whether a critic or a cost model is needed,
is the algorithm's object (algorithms.py); the rollout engine is rollout.py, the update update.py,
the processes and sharding engine.py. The critic-free algorithms sample G responses per prompt and
have no critic (none built, prepared, optimised or checkpointed; no value loss). Everything else
(sampler, resume, monitors, LoRA, in-loop evaluation, trackers) is shared.

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

import functools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedType, gather_object, set_seed
from transformers import PreTrainedTokenizerBase, get_scheduler

from rlhf import chat
from rlhf.config import TrainPolicyParams
from rlhf.policy_optimization import core
from rlhf.policy_optimization.algorithms import Algorithm, algorithm_for
from rlhf.policy_optimization.checkpoint import Checkpoints
from rlhf.policy_optimization.engine import (
    fsdp_units,
    gathered,
    make_accelerator,
    reset_peak_memory,
    shards_weights,
    throughput_and_memory,
    whole_for_rollout,
)
from rlhf.policy_optimization.in_loop_eval import (
    WinRateVsStart,
    evaluate_in_loop,
    evaluation_due,
    every,
    keep_policy,
    remember_if_best,
)
from rlhf.policy_optimization.models import PolicyModels
from rlhf.policy_optimization.monitors import gold_plateau, reward_hacking_alarm, stop_if_unsafe
from rlhf.policy_optimization.rollout import (
    RewardScorer,
    Rollout,
    ScoreNormalizer,
    collect_rollout,
    device_clock,
    sample_responses,
)
from rlhf.policy_optimization.update import policy_update, recompute_logprobs
from rlhf.rewards.rules import RulesReward
from rlhf.sampling import CompiledSampler


@dataclass
class PolicyResult:
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


@dataclass
class Run:
    """What the loop works with once it is set up (`start_run`): the algorithm, the prepared models
    and their optimizer, the resumable state and where it is checkpointed."""

    algorithm: Algorithm
    accelerator: Accelerator
    models: PolicyModels
    trained: torch.nn.Module  # policy (and critic) as the engine wrapped them
    forward: Callable  # `trained`, or its torch.compile'd wrapper, for the update's forward passes
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    state: TrainerState
    checkpoints: Checkpoints | None
    prompts: list[chat.Conversation]
    tokenizer: PreTrainedTokenizerBase
    scorer: RewardScorer  # the online reward
    cost_scorer: RewardScorer | None = None  # PPO-Lagrangian's cost model
    gold_scorer: RulesReward | None = None  # the gold judge, scored beside the proxy
    resumed_from: int | None = None
    recompute: Callable[..., torch.Tensor] | None = None  # recompute_old_logprobs: pi_old by the update's forward

    def sample_prompts(self) -> list[chat.Conversation]:
        return draw_prompts(self.state.prompt_rng, self.prompts, self.algorithm.params, self.accelerator)

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.accelerator.reduce(tensor, reduction="sum")

    def rollout(self, prompts: list[chat.Conversation]) -> tuple[Rollout, dict[str, float]]:
        """Sample, score, the KL and the algorithm's advantages (rollout.collect_rollout)."""
        with self.accelerator.autocast(), whole_for_rollout(self.models):  # bf16 on CUDA, as the update
            return collect_rollout(
                self.models,
                self.scorer,
                self.state.normalizer,
                self.tokenizer,
                prompts,
                self.algorithm.params,
                self.state.kl.value,
                all_reduce=self.all_reduce,
                gather=self.accelerator.gather,
                cost_scorer=self.cost_scorer,
                gold_scorer=self.gold_scorer,
                recompute_logprobs=self.recompute,
                algorithm=self.algorithm,
            )

    def update(self, rollout: Rollout) -> dict[str, float]:
        """The algorithm's loss over `rollout`'s minibatches (update.policy_update)."""
        return policy_update(
            self.trained,
            self.forward,
            self.accelerator,
            self.optimizer,
            rollout,
            self.algorithm.params,
            self.state.shuffle,
            self.checkpoints,
            self.state.kl.value,
            self.algorithm,
        )


def train_policy(
    models: PolicyModels,
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
) -> PolicyResult:
    """Train `models` in place with `params.algorithm`; resumes from `checkpoint_dir` when it holds
    this run's checkpoint (`fingerprint` names the run).

    `cost_scorer`: PPO-Lagrangian's cost model, whose P(unsafe) weighs against the reward by lambda,
    which follows the measured cost toward `params.safety.cost_limit`. `gold_scorer`: scored beside
    the proxy every iteration (gold_score, sqrt_kl). With `evaluator`, every `params.eval_every`
    iterations and at the last the row gets the win rate against the start (eval_win_rate); with
    `params.keep == "best"` `models` ends holding the policy of the best one. `log(row)` gets every
    iteration's row; `log_samples(iteration, rows)` gets `params.log_samples` samples (prompt,
    response, reward, kl) every `params.log_samples_every` iterations, on the main process only."""
    algorithm, device = algorithm_for(params), next(models.trained.parameters()).device
    accelerator = accelerator or make_accelerator(params, device)
    refuse_what_is_not_built(algorithm, accelerator, cost_scorer, evaluator)
    run = start_run(models, algorithm, scorer, tokenizer, prompts, seed, log, accelerator, checkpoint_dir, fingerprint)
    run.cost_scorer, run.gold_scorer = cost_scorer, gold_scorer
    state = run.state
    stopped_early = None
    for iteration in range(state.iteration + 1, params.iterations + 1):
        started = device_clock(device)
        reset_peak_memory(device)
        batch_prompts = run.sample_prompts()
        # 1-4. sample -> score -> KL -> advantages: the rollout engine, with the algorithm's advantages
        rollout, stats = run.rollout(batch_prompts)
        stats["rollout_seconds"] = device_clock(device) - started
        stop_if_unsafe(stats, iteration, params, run.checkpoints)
        # 5. update: epochs of the algorithm's loss over shuffled minibatches
        update_started = device_clock(device)
        stats.update(run.update(rollout))
        stats["update_seconds"] = device_clock(device) - update_started
        stats.update(throughput_and_memory(stats, device_clock(device) - started, device))
        stop_if_unsafe(stats, iteration, params, run.checkpoints)
        # 6. the controllers: beta toward target_kl, lambda toward the cost limit, the learning rate
        step_controllers(run, stats)
        row = {"iteration": iteration, **{k: round(v, 6) for k, v in stats.items()}}
        # 7. monitors and the in-loop evaluation, then log and checkpoint
        stopped_early = reward_hacking_alarm(stats, params) or gold_plateau([*state.history, row], params)
        if evaluator is not None and evaluation_due(iteration, params, stopped_early):
            row.update(evaluate_in_loop(evaluator, models, tokenizer, params, accelerator))
            if params.keep == "best":
                remember_if_best(state, models, iteration, row["eval_win_rate"])
        state.history.append(row)
        state.iteration = iteration
        log(row)
        if log_samples is not None and every(iteration, params.log_samples_every) and accelerator.is_main_process:
            log_samples(iteration, samples_table(batch_prompts, rollout, tokenizer, params.log_samples))
        if stopped_early:
            log({"stopped_early": stopped_early, "iteration": iteration})
            break
        if run.checkpoints and (iteration % params.checkpoint_every == 0 or iteration == params.iterations):
            run.checkpoints.save(iteration)
    kept_iteration, kept_win_rate = keep_policy(models, state, params)
    return PolicyResult(state.history, stopped_early, run.resumed_from, kept_iteration, kept_win_rate)


def refuse_what_is_not_built(algorithm: Algorithm, accelerator: Accelerator, cost_scorer, evaluator) -> None:
    params = algorithm.params
    if (cost_scorer is not None) != algorithm.needs_cost_model:
        raise ValueError(f"train_policy.algorithm {params.algorithm}: a cost scorer is needed by ppo_lagrangian only")
    # the schema refuses keep: best without eval_every or under a sharded launcher; what it cannot
    # see is a caller that passes no evaluator
    if params.keep == "best" and evaluator is None:
        raise ValueError("keep: best needs the in-loop evaluation: pass an evaluator")


def start_run(
    models: PolicyModels,
    algorithm: Algorithm,
    scorer: RewardScorer,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[chat.Conversation],
    seed: int,
    log: Callable[[dict], None],
    accelerator: Accelerator,
    checkpoint_dir: str | Path | None,
    fingerprint: dict | None,
) -> Run:
    """Everything the loop needs, in the order the engines want it: the optimizer and schedule, the
    resumable state, the score normaliser's first batch (before the engine copies the weights), the
    engine's wrapping, then the checkpoint to resume from, if any."""
    params = algorithm.params
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
        lagrange=getattr(algorithm, "lagrange", None),
    )
    accelerator.register_for_checkpointing(state, scheduler)
    checkpoints = Checkpoints(checkpoint_dir, fingerprint or {}, accelerator) if checkpoint_dir is not None else None
    latest = checkpoints.latest() if checkpoints else None
    if latest is None and params.score_normalization != "none":
        # initial: these are the statistics; running: they seed the running ones. Either way the
        # critic copied from the reward model starts on the scale its returns will be on. Before the
        # engine wraps the models: ZeRO copies the weights it will update (its fp32 master) at prepare.
        batch = draw_prompts(state.prompt_rng, prompts, params, accelerator)
        calibrate(models, scorer, state.normalizer, tokenizer, batch, params, accelerator)
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
    forward = torch.compile(trained) if params.compile else trained
    if shards_weights(accelerator):
        models.generation_context = functools.partial(gathered, accelerator, models.trained.policy)
    run = Run(
        algorithm,
        accelerator,
        models,
        trained,
        forward,
        optimizer,
        scheduler,
        state,
        checkpoints,
        prompts,
        tokenizer,
        scorer,
    )
    if latest is not None:
        accelerator.load_state(str(latest))
        run.resumed_from = state.iteration
        # The rows before the checkpoint too: a tracker whose files a re-run cleared logs them again.
        log({"resumed_from": run.resumed_from, "checkpoint": str(latest), "history": list(state.history)})
    elif checkpoints:
        checkpoints.start_fresh()
    if params.recompute_old_logprobs:
        run.recompute = functools.partial(recompute_logprobs, forward, params)
    return run


def draw_prompts(
    rng: random.Random, prompts: list[chat.Conversation], params: TrainPolicyParams, accelerator: Accelerator
) -> list[chat.Conversation]:
    """This process's share of a batch: each drawn prompt G times in a row (prompt-major; G = 1 for PPO)."""
    local_batch, repeats = params.batch_size // accelerator.num_processes, params.responses_per_prompt
    drawn = [rng.choice(prompts) for _ in range(local_batch // repeats)]
    return [prompt for prompt in drawn for _ in range(repeats)]


def step_controllers(run: Run, stats: dict) -> None:
    """Log beta and the learning rate this iteration used, then step them and lambda for the next:
    the adaptive KL controller on the iteration's KL, lambda on its cost, the LR schedule."""
    state, params = run.state, run.algorithm.params
    stats["kl_coef"] = state.kl.value
    stats["learning_rate"] = run.scheduler.get_last_lr()[0]
    state.kl.update(stats["kl"], params.batch_size)
    if state.lagrange is not None:
        state.lagrange.update(stats["cost"])
    run.scheduler.step()


def parameter_groups(models: PolicyModels, params: TrainPolicyParams) -> list[dict]:
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


def calibrate(models, scorer, normalizer, tokenizer, prompts, params, accelerator) -> None:
    """Score one batch of the starting policy's responses: the 'initial' normalisation statistics."""
    with accelerator.autocast():
        sample = sample_responses(models, tokenizer, prompts, params)
        normalizer.observe(accelerator.gather(scorer(prompts, sample.texts).to(sample.response_ids.device)))

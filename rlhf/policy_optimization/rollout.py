"""The rollout engine, one batch of experience: sample -> score -> KL -> advantages.

Forward passes per rollout: the sampling loop (which keeps the policy's log-probs, so the policy
is not run again), one reference pass, one critic pass (PPO only), one reward-model pass. The stats
time them as phases: generation_seconds (sampling), scoring_seconds (reward, cost and gold
scorers), reference_seconds (reference and critic passes).

The advantages are the algorithm's (algorithms.py: PPO's rewards -> GAE -> whiten, GRPO's group
normalisation, ...). The critic-free algorithms get the prompts already repeated G times,
prompt-major (the trainer's sampler does that) and run no critic.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from rlhf import chat
from rlhf.config import TrainPolicyParams
from rlhf.logprobs import response_logits, token_logprobs
from rlhf.policy_optimization import core, estimators
from rlhf.policy_optimization.algorithms import Algorithm, ScoredBatch, algorithm_for
from rlhf.policy_optimization.models import PolicyModels, critic_values
from rlhf.policy_optimization.rollout_correction import importance_weights
from rlhf.pretrained import use_fused_gelu
from rlhf.rewards.rules import RulesReward  # the gold judge (the rules), scored beside the proxy
from rlhf.sampling import prompt_batch, sample_with_logprobs
from rlhf.scoring import score_exchanges


@dataclass
class Rollout:
    """One batch of experience. B = responses, Q = prompt tokens, T = response tokens."""

    query_ids: torch.Tensor  # (B, Q) left-padded prompt tokens
    query_mask: torch.Tensor  # (B, Q)
    response_ids: torch.Tensor  # (B, T) sampled tokens, padded after the first stop token
    mask: torch.Tensor  # (B, T) 1 on response tokens up to and including the first stop token
    logprobs: torch.Tensor  # (B, T) log pi_old(a_t | s_t)
    values: torch.Tensor | None  # (B, T) V_old(s_t); None without a critic
    scores: torch.Tensor  # (B,) normalised reward score, minus the missing-EOS penalty
    advantages: torch.Tensor  # (B, T) the algorithm's advantages (PPO: whitened GAE)
    returns: torch.Tensor | None  # (B, T) advantages + values: the value targets; None without a critic
    raw_scores: torch.Tensor  # (B,) the reward as its sources said it (the samples table shows it)
    kl: torch.Tensor  # (B,) sequence KL to the reference, by params.kl_estimator (the samples table shows it)
    ref_logprobs: torch.Tensor | None = None  # (B, T) log pi_ref(a_t | s_t): GRPO's k3 loss term reads it
    # (B, T) log pi_rollout(a_t | s_t), the sampler's, where `logprobs` were recomputed by the update's forward
    rollout_logprobs: torch.Tensor | None = None
    correction: torch.Tensor | None = None  # (B, T) rollout-correction weight of each token's policy loss
    kept: torch.Tensor | None = None  # (B,) bool: in the policy-gradient term (dynamic sampling drops groups)

    @property
    def policy_mask(self) -> torch.Tensor:
        """(B, T) the policy-gradient term's tokens: `mask` on the responses dynamic sampling kept."""
        return self.mask if self.kept is None else self.mask * self.kept[:, None].to(self.mask.dtype)

    def minibatch(self, index: torch.Tensor) -> Rollout:
        """The rows at `index`, trimmed of columns that are padding in every one of them."""
        rows = Rollout(**{name: None if t is None else t[index] for name, t in vars(self).items()})
        first_prompt_column = int((rows.query_mask.sum(0) > 0).long().argmax())
        response_columns = max(int(rows.mask.sum(-1).max()), 1)
        for name, tensor in vars(rows).items():
            if tensor is None:
                continue
            if name.startswith("query"):
                setattr(rows, name, tensor[:, first_prompt_column:])
            elif tensor.dim() == 2:
                setattr(rows, name, tensor[:, :response_columns])
        return rows


class ScoreNormalizer:
    """Reward-model scores as PPO sees them (params: score_normalization).

    none: raw. initial: standardised by the mean and std of the starting policy's scores on one
    batch (InstructGPT normalises its RM so the SFT policy scores 0 on average). running: by the
    running mean and std of every score seen so far (Welford's algorithm, merged per batch).

    Scores that do not vary (std under MIN_STD: a rules or verifier reward can give a batch of
    equal scores) are centred but not scaled: dividing by a std of ~0 would turn a score of 1 into
    a million and leave the KL and missing-EOS penalties nothing beside it.
    """

    MIN_STD = 1e-3

    def __init__(self, mode: str):
        self.mode, self.count, self.mean, self.m2 = mode, 0, 0.0, 0.0

    def observe(self, raw: torch.Tensor) -> None:
        raw = raw.double()
        n, mean = len(raw), raw.mean().item()
        m2 = ((raw - mean) ** 2).sum().item()
        total = self.count + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta**2 * self.count * n / total
        self.count = total

    @property
    def std(self) -> float:
        std = (self.m2 / max(self.count - 1, 1)) ** 0.5
        return std if std >= self.MIN_STD else 1.0

    def __call__(self, raw: torch.Tensor) -> torch.Tensor:
        if self.mode == "none" or self.count == 0:
            return raw
        return (raw - self.mean) / self.std

    def state_dict(self) -> dict:
        return {"mode": self.mode, "count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: dict) -> None:
        self.mode, self.count, self.mean, self.m2 = state["mode"], state["count"], state["mean"], state["m2"]


class RewardScorer:
    """The frozen reward (or cost) model, reading each exchange with its own tokenizer as it was
    trained to (rlhf.scoring): the text crosses over, not the policy's token ids."""

    def __init__(self, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase):
        self.model, self.tokenizer = use_fused_gelu(model.requires_grad_(False).eval()), tokenizer

    def __call__(self, prompts: list[chat.Conversation], responses: list[str]) -> torch.Tensor:
        conversations = [chat.as_conversation(prompt) for prompt in prompts]  # a plain string is one user turn
        return score_exchanges(self.model, self.tokenizer, conversations, responses)


def device_clock(device: torch.device) -> float:
    """Wall time, after the device has finished its queued work (phase timings)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


@dataclass
class Samples:
    """One response per prompt from the current policy. B = prompts, Q = prompt tokens, T = response tokens."""

    query_ids: torch.Tensor  # (B, Q) left-padded
    query_mask: torch.Tensor  # (B, Q)
    response_ids: torch.Tensor  # (B, T) padded after the first stop token
    mask: torch.Tensor  # (B, T) float, 1 up to and including the first stop token
    ended: torch.Tensor  # (B,) emitted a stop token (rlhf.chat.stop_token_ids)
    logprobs: torch.Tensor  # (B, T) log pi(a_t | s_t) at sampling
    texts: list[str]  # (B,) decoded responses
    seconds: float  # wall time of the sampling loop


@torch.no_grad()
def sample_responses(
    models: PolicyModels,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[chat.Conversation],
    params: TrainPolicyParams,
) -> Samples:
    """One response per prompt conversation, rendered with the policy's chat template (rlhf.chat)."""
    policy = models.trained.policy
    device = next(policy.parameters()).device
    texts = [chat.render_prompt(tokenizer, chat.as_conversation(prompt)) for prompt in prompts]
    query = prompt_batch(tokenizer, texts, device)
    policy.eval()  # generation wants the KV cache, which gradient checkpointing turns off in train mode
    started = device_clock(device)
    sampler = models.compiled_sampler or functools.partial(sample_with_logprobs, policy)
    with models.generation_context():
        response_ids, mask, ended, logprobs = sampler(
            query["input_ids"],
            query["attention_mask"],
            params.max_new_tokens,
            params.temperature,
            chat.stop_token_ids(tokenizer, policy),
            tokenizer.pad_token_id,
        )
    seconds = device_clock(device) - started
    policy.train()
    texts = [t.strip() for t in tokenizer.batch_decode(response_ids, skip_special_tokens=True)]
    return Samples(
        query["input_ids"], query["attention_mask"], response_ids, mask.float(), ended, logprobs, texts, seconds
    )


@dataclass
class Scores:
    """A batch's scores from the online reward (and the cost model). B = responses."""

    raw: torch.Tensor  # (B,) the reward as its sources said it
    scores: torch.Tensor  # (B,) normalised, minus the missing-EOS penalty
    penalties: torch.Tensor  # (B,) the missing-EOS penalty
    costs: torch.Tensor | None  # (B,) the cost model's P(unsafe); PPO-Lagrangian only
    seconds: float


def score(sample: Samples, prompts, scorer, normalizer: ScoreNormalizer, params, gather, cost_scorer) -> Scores:
    """The reward at the end of each response, normalised, minus the missing-EOS penalty; the cost
    model's P(unsafe) beside it where there is one (PPO-Lagrangian weighs it by lambda)."""
    device = sample.response_ids.device
    started = device_clock(device)
    raw = scorer(prompts, sample.texts).to(device)
    if normalizer.mode == "running":
        normalizer.observe(gather(raw))
    penalties = params.missing_eos_penalty * (~sample.ended).float()
    scores = normalizer(raw) - penalties
    costs = None if cost_scorer is None else torch.sigmoid(cost_scorer(prompts, sample.texts).to(device))
    return Scores(raw, scores, penalties, costs, device_clock(device) - started)


def reference_pass(models: PolicyModels, sample: Samples, params) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log pi_ref of the sampled tokens, and V_old(s_t) where there is a critic.  (B, T), (B, T) or None"""
    args = (sample.query_ids, sample.query_mask, sample.response_ids, sample.mask)
    with models.reference_policy() as reference:
        ref_logprobs = token_logprobs(response_logits(reference, *args, params.temperature), sample.response_ids)
    values = None if models.trained.critic is None else critic_values(models.trained.critic, *args) * sample.mask
    return ref_logprobs * sample.mask, values


@torch.no_grad()
def collect_rollout(
    models: PolicyModels,
    scorer: RewardScorer,
    normalizer: ScoreNormalizer,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[chat.Conversation],
    params: TrainPolicyParams,
    kl_coef: float,
    all_reduce: core.AllReduce | None = None,
    gather=lambda tensor: tensor,
    cost_scorer: RewardScorer | None = None,
    gold_scorer: RulesReward | None = None,
    recompute_logprobs: Callable[..., torch.Tensor] | None = None,
    algorithm: Algorithm | None = None,
) -> tuple[Rollout, dict[str, float]]:
    """One batch of experience and its statistics, its advantages as `algorithm` computes them
    (default: the one `params.algorithm` names). `recompute_logprobs(query_ids, query_mask,
    response_ids, mask)`: the update's own forward (train_policy.recompute_old_logprobs), whose
    log-probs then stand for pi_old everywhere (the KL, the advantages, the ratio), the sampler's
    kept for the rollout correction."""
    algorithm = algorithm or algorithm_for(params)
    # 1. sample one response per prompt from the current policy, keeping log pi_rollout
    sample = sample_responses(models, tokenizer, prompts, params)
    mask, device = sample.mask, sample.response_ids.device
    logprobs, rollout_logprobs, drift, recompute_seconds = sample.logprobs, None, {}, 0.0
    if recompute_logprobs is not None:  # 1b. pi_old from the update's forward, before anything reads it
        started = device_clock(device)
        args = (sample.query_ids, sample.query_mask, sample.response_ids, mask)
        rollout_logprobs, logprobs = logprobs, recompute_logprobs(*args) * mask
        drift = {"rollout_logprob_drift": core.masked_mean((logprobs - rollout_logprobs).abs(), mask).item()}
        recompute_seconds = device_clock(device) - started  # a forward over the rollout, as the reference's
    # 2. score: the reward model at the end of the response, normalised, minus the missing-EOS penalty
    scored = score(sample, prompts, scorer, normalizer, params, gather, cost_scorer)
    # 3. reference log-probs and (PPO only) the critic's values
    reference_started = device_clock(device)
    ref_logprobs, values = reference_pass(models, sample, params)
    reference_seconds = device_clock(device) - reference_started + recompute_seconds
    # 4. the KL where the algorithm puts it, and its advantages (PPO: rewards -> GAE -> whiten)
    batch = ScoredBatch(scored.scores, scored.penalties, scored.costs, logprobs, ref_logprobs, values, mask)
    advantages, returns = algorithm.advantages(batch, kl_coef, all_reduce)
    kl = (core.kl_per_token(logprobs, ref_logprobs, params.kl_estimator) * mask).sum(-1)
    rollout = Rollout(
        sample.query_ids,
        sample.query_mask,
        sample.response_ids,
        mask,
        logprobs,
        values,
        scored.scores,
        advantages,
        returns,
        scored.raw,
        kl,
        ref_logprobs,
        rollout_logprobs,
    )
    stats = {
        **rollout_stats(sample, scored, kl, gather),
        "reference_seconds": reference_seconds,
        "generated_tokens": gather(mask.sum()).sum().item(),
        **drift,
    }
    if params.rollout_correction != "none":  # 5. importance weights between sampler and trainer
        rollout.correction, corrected = importance_weights(
            logprobs, rollout_logprobs, mask, params.rollout_correction, params.rollout_correction_threshold
        )
        corrected_tokens, tokens = gather(corrected.sum().double()).sum(), gather(mask.sum().double()).sum()
        stats["rollout_corrected_share"] = (corrected_tokens / tokens).item()
    # A weighted reward's parts (rlhf.rewards.combine): each source's mean, so a user sees which one moved.
    # Every process scores an equal share, so the mean of the processes' means is the global mean.
    for name, mean in getattr(scorer, "last_means", {}).items():
        stats[f"reward_{name}"] = gather(torch.tensor([mean], device=device)).mean().item()
    if scored.costs is not None:
        stats.update(cost=gather(scored.costs).mean().item(), lagrange_multiplier=algorithm.lagrange.value)
    if params.dynamic_sampling:
        stats["dropped_share"] = drop_uninformative_groups(rollout, params.group_size, gather)
    if gold_scorer is not None:  # gold beside proxy against sqrt(KL): where the policy games the reward model
        gold_started = device_clock(device)
        gold = gold_scorer(prompts, sample.texts).to(device)
        stats["scoring_seconds"] += device_clock(device) - gold_started
        stats.update(gold_score=gather(gold).mean().item(), sqrt_kl=max(stats["kl"], 0.0) ** 0.5)
    return rollout, stats


def rollout_stats(sample: Samples, scored: Scores, kl: torch.Tensor, gather) -> dict[str, float]:
    """The batch's means over every process: score, KL, length, the reward-hacking monitors, phase times."""
    mask = sample.mask
    return {
        "score": gather(scored.scores).mean().item(),
        "raw_score": gather(scored.raw).mean().item(),
        "kl": gather(kl).mean().item(),
        "response_length": gather(mask.sum(-1)).mean().item(),
        "repetition": gather(core.repetition_rate(sample.response_ids, mask).to(mask.device)).mean().item(),
        "ended_share": gather(sample.ended.float()).mean().item(),
        "generation_seconds": sample.seconds,
        "scoring_seconds": scored.seconds,
    }


def drop_uninformative_groups(rollout: Rollout, group_size: int, gather) -> float:
    """DAPO's dynamic sampling (Yu et al. 2025): a group whose advantages are all zero has no
    policy gradient to give, so its responses leave the policy-gradient term (`rollout.kept`): they
    add no token to its mean and no gradient. They stay in GRPO's KL term, which regularises every
    sampled prompt, and keep their rows, so every process runs the same number of micro-steps (DDP)
    and the minibatch layout stays as configured; unlike DAPO the batch is not refilled by sampling
    more. Decided on the advantages (estimators.dynamic_sampling_mask), so RLOO's KL-carrying
    groups stay. Returns the share of the global batch's responses dropped."""
    sequence_advantages = (rollout.advantages * rollout.mask).sum(-1) / rollout.mask.sum(-1).clamp(min=1)  # (B,)
    rollout.kept = estimators.dynamic_sampling_mask(sequence_advantages, group_size, tolerance=1e-6)
    return 1.0 - gather(rollout.kept.float()).mean().item()

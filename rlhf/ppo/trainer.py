"""The PPO loop for RLHF: sample -> score -> KL -> GAE -> whiten -> update, top to bottom.

Where this departs from the papers (a first version; issue #3 deepens it):
  - The critic is a separate network initialised from the reward model (as in TRL's PPOv2 and
    the N-details paper), not a head on the policy, so value loss never moves the policy.
  - RM scores are normalised with the mean and std of scores the starting policy earns on one
    batch, measured once before training (InstructGPT normalises the RM's bias the same way).
  - The KL coefficient is fixed (no adaptive controller yet); the KL estimator is k1.
  - Dropout is off in every model (models stay in eval mode), so log-probs of the rollout and
    of the update agree at the first step.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlhf.config import TrainPolicyParams
from rlhf.logprobs import joined_inputs, response_logits, token_logprobs
from rlhf.models import backbone
from rlhf.ppo import core
from rlhf.reward import score_texts
from rlhf.sampling import generate
from rlhf.text import join


@dataclass
class Rollout:
    """One batch of experience. B = responses, Q = prompt tokens, T = response tokens."""

    query_ids: torch.Tensor  # (B, Q) left-padded prompt tokens
    query_mask: torch.Tensor  # (B, Q)
    response_ids: torch.Tensor  # (B, T) sampled tokens, padded after EOS
    mask: torch.Tensor  # (B, T) 1 on response tokens up to and including EOS
    logprobs: torch.Tensor  # (B, T) log pi_old(a_t | s_t)
    values: torch.Tensor  # (B, T) V_old(s_t)
    scores: torch.Tensor  # (B,) normalised reward-model score, minus the missing-EOS penalty
    advantages: torch.Tensor  # (B, T) whitened GAE advantages
    returns: torch.Tensor  # (B, T) advantages + values: the value targets

    def minibatch(self, index: torch.Tensor) -> "Rollout":
        return Rollout(**{name: tensor[index] for name, tensor in vars(self).items()})


def critic_values(critic: PreTrainedModel, query_ids, query_mask, response_ids, mask) -> torch.Tensor:
    """V(s_t) for every response position: the scalar head applied to every hidden state.  (B, T)"""
    input_ids, attention_mask, position_ids = joined_inputs(query_ids, query_mask, response_ids, mask)
    hidden = backbone(critic)(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
    ).last_hidden_state
    return critic.score(hidden)[:, query_ids.shape[1] - 1 : -1, 0].float()


class RewardScorer:
    """The frozen reward model, with scores normalised by the starting policy's mean and std."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase):
        self.model, self.tokenizer = model, tokenizer
        self.mean, self.std = 0.0, 1.0

    def raw(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        return score_texts(self.model, self.tokenizer, [join(p, r) for p, r in zip(prompts, responses)])

    def calibrate(self, prompts: list[str], responses: list[str]) -> None:
        raw = self.raw(prompts, responses)
        self.mean, self.std = raw.mean().item(), raw.std().clamp(min=1e-6).item()

    def __call__(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        return (self.raw(prompts, responses) - self.mean) / self.std


@torch.no_grad()
def collect_rollout(
    policy, ref_policy, critic, scorer: RewardScorer, tokenizer, prompts: list[str], params: TrainPolicyParams
) -> tuple[Rollout, dict[str, float]]:
    # 1. sample one response per prompt from the current policy
    gen = generate(policy, tokenizer, prompts, params.max_new_tokens, params.temperature)
    device = gen.response_ids.device
    # 2. score: normalised RM score, minus a penalty for responses that never end
    scores = scorer(prompts, gen.texts).to(device)
    scores = scores - params.missing_eos_penalty * (~gen.ended).float()
    # 3. log-probs under the policy and the frozen reference, and the critic's values
    args = (gen.query_ids, gen.query_mask, gen.response_ids, gen.response_mask)
    logprobs = token_logprobs(response_logits(policy, *args, params.temperature), gen.response_ids)
    ref_logprobs = token_logprobs(response_logits(ref_policy, *args, params.temperature), gen.response_ids)
    values = critic_values(critic, *args)
    mask = gen.response_mask.float()
    # 4. per-token KL penalty, sequence score on the last token
    rewards = core.rlhf_rewards(scores, logprobs, ref_logprobs, mask, params.kl_coef)
    # 5. GAE, then whiten the advantages over the batch
    advantages, returns = core.gae(rewards, values, mask, params.gamma, params.lam)
    advantages = core.whiten(advantages, mask)
    rollout = Rollout(
        gen.query_ids, gen.query_mask, gen.response_ids, mask, logprobs, values, scores, advantages, returns
    )
    kl = (core.kl_per_token(logprobs, ref_logprobs) * mask).sum(-1)
    stats = {
        "score": scores.mean().item(),
        "kl": kl.mean().item(),
        "response_length": mask.sum(-1).mean().item(),
        "ended_share": gen.ended.float().mean().item(),
    }
    return rollout, stats


def ppo_update(policy, critic, policy_opt, critic_opt, rollout: Rollout, params: TrainPolicyParams, generator):
    """Several epochs of clipped PPO over shuffled minibatches of one rollout."""
    totals: dict[str, float] = {}
    updates = 0
    for _ in range(params.ppo_epochs):
        order = torch.randperm(len(rollout.scores), generator=generator)
        for start in range(0, len(order), params.minibatch_size):
            mb = rollout.minibatch(order[start : start + params.minibatch_size].to(rollout.scores.device))
            args = (mb.query_ids, mb.query_mask, mb.response_ids, mb.mask)
            logits = response_logits(policy, *args, params.temperature)
            logprobs = token_logprobs(logits, mb.response_ids)
            pg_loss, pg_stats = core.policy_loss(logprobs, mb.logprobs, mb.advantages, mb.mask, params.clip_range)
            policy_opt.zero_grad()
            pg_loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), params.max_grad_norm)
            policy_opt.step()

            values = critic_values(critic, *args)
            v_loss = params.vf_coef * core.value_loss(values, mb.values, mb.returns, mb.mask, params.value_clip_range)
            critic_opt.zero_grad()
            v_loss.backward()
            torch.nn.utils.clip_grad_norm_(critic.parameters(), params.max_grad_norm)
            critic_opt.step()

            with torch.no_grad():
                entropy = core.masked_mean(core.entropy_from_logits(logits.float()), mb.mask)
            step = {"policy_loss": pg_loss.item(), "value_loss": v_loss.item(), "entropy": entropy.item()}
            step.update({k: v.item() for k, v in pg_stats.items()})
            for key, value in step.items():
                totals[key] = totals.get(key, 0.0) + value
            updates += 1
    return {key: value / updates for key, value in totals.items()}


def train_ppo(
    policy: PreTrainedModel,
    ref_policy: PreTrainedModel,
    critic: PreTrainedModel,
    scorer: RewardScorer,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    params: TrainPolicyParams,
    seed: int,
    log: Callable[[dict], None] = print,
) -> list[dict]:
    """Run PPO; returns one row of statistics per iteration."""
    for model in (policy, ref_policy, critic, scorer.model):
        model.eval()  # dropout off everywhere (see module docstring); gradients still flow
    ref_policy.requires_grad_(False)
    scorer.model.requires_grad_(False)
    rng = random.Random(seed)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    policy_opt = torch.optim.Adam(policy.parameters(), lr=params.learning_rate, eps=1e-5)
    critic_opt = torch.optim.Adam(critic.parameters(), lr=params.value_learning_rate, eps=1e-5)

    def batch_of_prompts() -> list[str]:
        return [rng.choice(prompts) for _ in range(params.batch_size)]

    calibration_prompts = batch_of_prompts()
    calibration = generate(policy, tokenizer, calibration_prompts, params.max_new_tokens, params.temperature)
    scorer.calibrate(calibration_prompts, calibration.texts)

    history = []
    for iteration in range(1, params.iterations + 1):
        rollout, stats = collect_rollout(policy, ref_policy, critic, scorer, tokenizer, batch_of_prompts(), params)
        stats.update(ppo_update(policy, critic, policy_opt, critic_opt, rollout, params, generator))
        for name, value in stats.items():
            if not torch.isfinite(torch.tensor(value)):
                raise FloatingPointError(f"PPO iteration {iteration}: {name} is {value}; stopping")
        row = {"iteration": iteration, **{k: round(v, 5) for k, v in stats.items()}}
        history.append(row)
        log(row)
    return history

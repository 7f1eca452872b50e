"""Critic-free advantage estimators and their losses as small pure torch functions, beside PPO's (core.py).

Shapes follow core.py: B = responses in the batch, T = response tokens, `mask` (B, T) is 1 on real
response tokens (up to and including EOS) and 0 on padding. Responses are grouped: the G responses
to one prompt lie next to each other (prompt-major), so `scores` (B,) reads as (P, G) with
P = B / G prompts: row p holds prompt p's G responses. Every group estimator needs the whole group
in one process; REINFORCE++ normalises over the global batch through `all_reduce` (core.AllReduce).

References:
  GRPO: Shao et al. 2024, "DeepSeekMath", eq. 3 (objective, 1/G sum_i 1/|o_i| sum_t), eq. 4 (the k3
    KL term), sec. 4.1.2 (outcome supervision: A_i,t = (r_i - mean(r)) / std(r) at every token).
  Dr. GRPO: Liu et al. 2025, "Understanding R1-Zero-Like Training: A Critical Perspective", sec. 3:
    drop std(r) (a difficulty bias) and 1/|o_i| (a length bias).
  RLOO: Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for Learning
    from Human Feedback in LLMs", sec. 3: baseline = the mean of the other k - 1 samples' rewards;
    the sequence reward carries the KL penalty, -beta * log(pi(y|x) / pi_ref(y|x)).
  REINFORCE++: Hu 2025, "REINFORCE++: A Simple and Efficient Approach for Aligning Large Language
    Models": per-token reward 1[t = end] r(x, y) - beta * KL_t, returns-to-go, advantages normalised
    over the global batch.
  DAPO: Yu et al. 2025, "DAPO: An Open-Source LLM Reinforcement Learning System at Scale": dynamic
    sampling (keep groups with 0 < #correct < G), token-level loss, clip-higher (eps_low != eps_high).
  KL estimators: Schulman 2020, "Approximating KL Divergence" (joschu.net/blog/kl-approx).

Where this departs from the papers:
  - std(r) is the unbiased (n - 1) sample std, as TRL and OpenRLHF compute it; the papers do not say.
  - Dr. GRPO's constant normaliser is a parameter (`max_length`): Liu et al.'s code divides the token
    sum by the generation budget, which is `max_new_tokens` here.
  - DAPO refills the batch after filtering by sampling more; `dynamic_sampling_mask` only says which
    groups to keep, the refill is the trainer's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from rlhf.policy_optimization import core

Aggregation = Literal["token_mean", "sequence_mean", "constant_length"]


def grouped(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """Sequence rewards laid out prompt-major, as one row per prompt.  (B,) -> (P, G)"""
    if group_size < 1 or len(scores) % group_size:
        raise ValueError(f"{len(scores)} responses do not split into groups of {group_size}")
    return scores.view(-1, group_size)


def per_token(advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Outcome supervision: a sequence's advantage given to each of its real tokens.  (B,) -> (B, T)"""
    return advantages[:, None] * mask  # promoted, so an integer mask cannot truncate the advantages


def grpo_advantages(
    scores: torch.Tensor, mask: torch.Tensor, group_size: int, scale_by_std: bool = True, eps: float = 1e-6
) -> torch.Tensor:
    """GRPO's group-normalised advantages (Shao et al. 2024, sec. 4.1.2).  (B,) -> (B, T)

    A_i,t = (r_i - mean(r_1..r_G)) / std(r_1..r_G)        for every token t of response o_i.
    scale_by_std=False is Dr. GRPO (Liu et al. 2025): A_i,t = r_i - mean(r_1..r_G); dividing by
    std gives prompts that are too easy or too hard (small std) more weight. A group of equal
    rewards gets advantage 0 either way (its std is 0, the eps keeps 0 / 0 away).
    """
    rewards = grouped(scores, group_size)  # (P, G)
    centred = rewards - rewards.mean(-1, keepdim=True)
    if scale_by_std:
        centred = centred / (rewards.std(-1, keepdim=True) + eps) if group_size > 1 else torch.zeros_like(centred)
    return per_token(centred.reshape(-1), mask)


def dr_grpo_advantages(scores: torch.Tensor, mask: torch.Tensor, group_size: int) -> torch.Tensor:
    """Dr. GRPO (Liu et al. 2025): A_i,t = r_i - mean(r_1..r_G), no std division.  (B,) -> (B, T)

    Its other half, no 1/|o_i| in the loss, is `aggregate(..., "constant_length", max_length)`."""
    return grpo_advantages(scores, mask, group_size, scale_by_std=False)


def rloo_advantages(scores: torch.Tensor, mask: torch.Tensor, group_size: int) -> torch.Tensor:
    """RLOO's leave-one-out advantages (Ahmadian et al. 2024, sec. 3).  (B,) -> (B, T)

    A_i = r_i - 1/(G-1) sum_{j != i} r_j  =  G/(G-1) * (r_i - mean(r)),
    a baseline that does not depend on y_i, so the estimator stays unbiased. `scores` are the
    sequence rewards with the KL penalty already in them (`kl_penalised_scores`).
    """
    if group_size < 2:
        raise ValueError("RLOO needs at least 2 responses per prompt for a leave-one-out baseline")
    rewards = grouped(scores, group_size)  # (P, G)
    others_mean = (rewards.sum(-1, keepdim=True) - rewards) / (group_size - 1)
    return per_token((rewards - others_mean).reshape(-1), mask)


def kl_penalised_scores(
    scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, kl_coef: float
) -> torch.Tensor:
    """RLOO's sequence reward (Ahmadian et al. 2024): R(x, y) = r(x, y) - beta * log(pi(y|x) / pi_ref(y|x)).  (B,)

    log pi(y|x) is the sum over the response's tokens, so the penalty is the summed k1 estimate:
    as a reward its policy gradient is that of KL(pi || pi_ref) (see core.rlhf_rewards)."""
    return scores - kl_coef * (core.kl_per_token(logprobs, ref_logprobs, "k1") * mask).sum(-1)


def returns_to_go(rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """G_t = sum_{s >= t} gamma^(s - t) r_s over each response.  (B, T) -> (B, T)

    GAE with V = 0 and lambda = 1 is exactly this discounted return, so core.gae computes it."""
    advantages, _ = core.gae(rewards, torch.zeros_like(rewards), mask, gamma, 1.0)
    return advantages


def reinforce_pp_advantages(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
    gamma: float = 1.0,
    all_reduce: core.AllReduce | None = None,
) -> torch.Tensor:
    """REINFORCE++ (Hu 2025): token rewards with the KL in them, returns-to-go, global whitening.  (B, T)

    r_t = 1[t = end] * r(x, y) - beta * log(pi_old(a_t|s_t) / pi_ref(a_t|s_t))   (core.rlhf_rewards)
    A_t = sum_{s >= t} gamma^(s-t) r_s;   A <- (A - mean(A)) / std(A) over every token of the global
    batch (not per group, not per prompt): the normalisation is REINFORCE++'s baseline and scale.
    """
    rewards = core.rlhf_rewards(scores, logprobs, ref_logprobs, mask, kl_coef)
    return core.whiten(returns_to_go(rewards, mask, gamma), mask, all_reduce=all_reduce) * mask


def dynamic_sampling_mask(values: torch.Tensor, group_size: int, tolerance: float = 0.0) -> torch.Tensor:
    """DAPO's dynamic sampling (Yu et al. 2025): which responses to keep.  (B,) -> (B,) bool

    `values` are the responses' sequence advantages. Under GRPO, Dr. GRPO and RLOO they sum to zero
    over a group, so a group whose G values are all equal (max - min <= tolerance) has advantage 0
    everywhere: it adds no policy gradient, only dilutes the batch, and its G responses are dropped
    (False); every response of every other group is kept (True). Deciding on the advantages, not
    the task scores, matters for RLOO: its rewards carry the KL penalty, so a group of equal task
    scores still has non-zero advantages (the KL's pull) and is kept."""
    rewards = grouped(values, group_size)  # (P, G)
    informative = (rewards.amax(-1) - rewards.amin(-1)) > tolerance  # (P,)
    return informative.repeat_interleave(group_size)


@dataclass(frozen=True)
class BatchSize:
    """What a minibatch's loss is divided by, counted over the whole minibatch: every micro-batch
    of it and every process. A micro-batch's loss is its sum over this, so the micro-batches' losses
    add up to the minibatch's, and its gradient does not depend on how the minibatch is split over
    micro-batches or processes (reducing each micro-batch on its own would make `token_mean` at
    micro-batch size 1 a per-sequence mean: GRPO's length bias, which Dr. GRPO and DAPO remove).

    tokens: response tokens in the loss; responses: responses with at least one; rows: every
    response of the minibatch, in the loss or not (Dr. GRPO's constant B)."""

    tokens: float
    responses: float
    rows: float

    @classmethod
    def of(cls, mask: torch.Tensor, all_reduce: core.AllReduce | None = None) -> BatchSize:
        """The counts of a (B, T) mask; summed over processes by `all_reduce` where given."""
        counts = torch.stack(
            [mask.sum(), (mask.sum(-1) > 0).sum(), torch.tensor(mask.shape[0], device=mask.device)]
        ).double()
        if all_reduce is not None:
            counts = all_reduce(counts)
        tokens, responses, rows = counts.tolist()
        return cls(max(tokens, 1.0), max(responses, 1.0), max(rows, 1.0))


def token_mean(losses: torch.Tensor, mask: torch.Tensor, total: BatchSize | None = None) -> torch.Tensor:
    """sum_{i,t} l_i,t / sum_i |o_i|: every token weighs the same (DAPO's token-level loss)."""
    total = total or BatchSize.of(mask)
    return (losses * mask).sum() / total.tokens


def sequence_mean(losses: torch.Tensor, mask: torch.Tensor, total: BatchSize | None = None) -> torch.Tensor:
    """1/B sum_i 1/|o_i| sum_t l_i,t over the responses in the loss: every response weighs the same
    (GRPO's eq. 3), so a token of a long response weighs less; the length bias Dr. GRPO removes."""
    total = total or BatchSize.of(mask)
    lengths = mask.sum(-1).clamp(min=1)  # (B,); a response out of the loss adds 0 / 1
    return ((losses * mask).sum(-1) / lengths).sum() / total.responses


def constant_length_mean(
    losses: torch.Tensor, mask: torch.Tensor, max_length: int, total: BatchSize | None = None
) -> torch.Tensor:
    """Dr. GRPO's loss: sum_{i,t} l_i,t / (B * L), L a constant (the generation budget) and B every
    response of the minibatch, so neither a response's length, the batch's token count nor the
    share dynamic sampling drops rescales a token's gradient (Liu et al. 2025)."""
    total = total or BatchSize.of(mask)
    return (losses * mask).sum() / (total.rows * max_length)


def aggregate(
    losses: torch.Tensor,
    mask: torch.Tensor,
    mode: Aggregation,
    max_length: int | None = None,
    total: BatchSize | None = None,
) -> torch.Tensor:
    """A per-token loss (B, T) reduced to a scalar as params name it: token_mean | sequence_mean |
    constant_length (which needs max_length). `total`: the whole minibatch's counts when this is one
    micro-batch of it (default: this batch's own, i.e. the batch is the whole minibatch)."""
    if mode == "token_mean":
        return token_mean(losses, mask, total)
    if mode == "sequence_mean":
        return sequence_mean(losses, mask, total)
    if mode == "constant_length":
        if max_length is None:
            raise ValueError("constant_length aggregation needs max_length (the generation budget)")
        return constant_length_mean(losses, mask, max_length, total)
    raise ValueError(f"unknown loss aggregation {mode!r}")


def k3_kl_loss(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    mode: Aggregation = "token_mean",
    max_length: int | None = None,
    total: BatchSize | None = None,
) -> torch.Tensor:
    """GRPO's KL term (Shao et al. 2024, eq. 4), added to the loss as + beta * this.  scalar

    k3_t = rho_t - 1 - log rho_t,  rho_t = pi_ref(a_t|s_t) / pi_theta(a_t|s_t),  a_t ~ pi_theta.

    What it estimates, exactly (per token, given the prefix s_t, for a_t drawn from pi_theta):
      - its value: E_{a ~ pi}[k3] = KL(pi_theta || pi_ref), since E_{a ~ pi}[rho] = 1; unbiased
        and never negative (Schulman 2020).
      - its gradient, differentiated through log pi_theta(a_t) with a_t held fixed (as a loss
        term, not a reward): grad k3 = (1 - rho) grad log pi_theta(a), whose expectation is
        sum_a (pi - pi_ref) grad log pi_theta(a) = -sum_a pi_ref grad log pi_theta(a)
        = grad KL(pi_ref || pi_theta). So the regulariser it applies is the *reverse* KL, a proper
        one (zero gradient at pi_theta = pi_ref, pulling toward the reference); the two KLs
        agree to second order near the reference, so there the difference is small.
    Caveats: this holds on-policy (a ~ pi_theta); in later PPO epochs the tokens come from pi_old
    and no importance weight corrects it, as in GRPO itself. The gradient through the state
    distribution (earlier tokens) is dropped, as with every per-token loss here. As a reward (not a
    loss) k3's gradient is neither KL's: see core.rlhf_rewards.
    """
    # Padding positions hold the current policy's log-prob of a pad token (e.g. -95) against a masked
    # reference log-prob of 0: expm1(95) overflows to inf and inf * 0 is NaN. Both sides are masked
    # first, so padding contributes exactly 0.
    kl = core.kl_per_token(logprobs * mask, ref_logprobs * mask, "k3")  # (B, T) expm1(log rho) - log rho
    return aggregate(kl, mask, mode, max_length, total)

"""The equations of RLHF-PPO as small pure torch functions.

Shapes: B = responses in the batch, T = response tokens. `mask` is 1 on real response tokens
(up to and including EOS) and 0 on padding; every mean here is over the mask.

References:
  PPO: Schulman et al. 2017, "Proximal Policy Optimization Algorithms", eq. 7 (clipped surrogate).
  GAE: Schulman et al. 2016, "High-Dimensional Continuous Control Using GAE", eq. 16.
  RLHF rewards: Ziegler et al. 2019 / Stiennon et al. 2020, eq. 2: r = RM score - beta * KL.
  Details (whitening, value clipping, per-token KL): Huang et al. 2024, "The N Implementation
  Details of RLHF with PPO".
  KL estimators k1, k3: Schulman 2020, "Approximating KL Divergence" (joschu.net/blog/kl-approx).
  Adaptive KL: Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences", sec. 2.2.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# Sums a tensor over every process (identity in a single process): whitening over the global batch.
AllReduce = Callable[[torch.Tensor], torch.Tensor]


def masked_mean(values: torch.Tensor, mask: torch.Tensor, total: torch.Tensor | float | None = None) -> torch.Tensor:
    """sum(values * mask) / sum(mask), or / `total` where given: the token count of the whole
    minibatch this micro-batch is part of, so that the micro-batches' losses add up to the
    minibatch's mean however it is split (see estimators.BatchSize)."""
    denominator = mask.sum().clamp(min=1) if total is None else total
    return (values * mask).sum() / denominator


def masked_var(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    centred = values - masked_mean(values, mask)
    return masked_mean(centred**2, mask)


def whiten(
    values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, all_reduce: AllReduce | None = None
) -> torch.Tensor:
    """Normalise to unit variance over the mask (and zero mean unless shift_mean is False)."""
    if all_reduce is None:
        mean, var = masked_mean(values, mask), masked_var(values, mask)
    else:  # the same moments over every process's batch
        sums = all_reduce(torch.stack([(values * mask).sum(), (values**2 * mask).sum(), mask.sum()]).double())
        mean = sums[0] / sums[2].clamp(min=1)
        var = (sums[1] / sums[2].clamp(min=1) - mean**2).clamp(min=0)
        mean, var = mean.to(values.dtype), var.to(values.dtype)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    return whitened if shift_mean else whitened + mean


def kl_per_token(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Estimate of KL(pi || pi_ref) at each sampled token a ~ pi.  (B, T)

    k1 = log pi(a) - log pi_ref(a): unbiased, negative at some tokens.
    k3 = (r - 1) - log r with r = pi_ref(a) / pi(a): unbiased, never negative, lower variance.
    """
    log_ratio = ref_logprobs - logprobs
    if estimator == "k1":
        return -log_ratio
    if estimator == "k3":
        return torch.expm1(log_ratio) - log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}")


class FixedKLController:
    def __init__(self, kl_coef: float):
        self.value = kl_coef

    def update(self, current_kl: float, episodes: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = state["value"]


class AdaptiveKLController(FixedKLController):
    """Ziegler et al. 2019: beta <- beta * (1 + K_beta * e), e = clip(KL / target - 1, -0.2, 0.2),
    K_beta = episodes / horizon. KL above target raises beta; below it lowers beta."""

    def __init__(self, kl_coef: float, target_kl: float, horizon: int):
        super().__init__(kl_coef)
        self.target, self.horizon = target_kl, horizon

    def update(self, current_kl: float, episodes: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * episodes / self.horizon


class LagrangeMultiplier:
    """PPO-Lagrangian's lambda for the constraint E[cost] <= limit (Safe RLHF, Dai et al. 2023).

    Projected gradient ascent on the dual: lambda <- clip(lambda + lr * (cost - limit), 0, max),
    once per iteration with the iteration's measured mean cost. Dai et al. step log(lambda); the
    plain step lets lambda reach 0 and stay there while the constraint holds.

    The KL convention follows Safe RLHF's reference code (PKU-Alignment's PPO-Lag trainer): the
    reward side carries -beta KL and the cost side +beta KL, and their advantages combine as
    (A_r - lambda A_c) / (1 + lambda), so the KL's weight is beta whatever lambda is. Only the
    score and the cost are traded against each other; the regularisers (KL, missing-EOS penalty)
    keep their weight, so a large lambda cannot switch the KL off (dividing the whole task side by
    1 + lambda made it 21 times weaker at lambda = 20).
    """

    def __init__(self, value: float, limit: float, lr: float, maximum: float):
        self.value, self.limit, self.lr, self.maximum = value, limit, lr, maximum

    def update(self, cost: float) -> None:
        self.value = min(max(self.value + self.lr * (cost - self.limit), 0.0), self.maximum)

    def penalised(self, scores: torch.Tensor, costs: torch.Tensor) -> torch.Tensor:
        """(R - lambda C) / (1 + lambda): Safe RLHF's combination of score and cost, kept on the
        reward's scale.  (B,), (B,) -> (B,)"""
        return (scores - self.value * costs) / (1.0 + self.value)

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = state["value"]


def at_last_token(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A per-sequence value placed on each response's last real token, zero elsewhere.  (B,) -> (B, T)"""
    placed = torch.zeros_like(mask, dtype=values.dtype)
    last = mask.sum(-1).long().clamp(min=1) - 1  # (B,) index of the final response token
    placed[torch.arange(len(values)), last] = values
    return placed


def rlhf_rewards(
    scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, kl_coef: float
) -> torch.Tensor:
    """Per-token rewards: -beta * KL at every token, plus the sequence score on the last real token.  (B, T)

    The KL is k1, log(pi/pi_ref) of the sampled token (Ziegler et al. 2019; Ouyang et al. 2022):
    as a reward, its policy gradient is that of KL(pi || pi_ref). k3 is an unbiased estimate of
    the KL's value but not of its gradient when used as a reward (E[grad log pi * k3] is not
    grad KL, and it nearly vanishes near the reference), so it serves for measuring only."""
    rewards = -kl_coef * kl_per_token(logprobs, ref_logprobs, "k1") * mask
    return rewards + at_last_token(scores, mask)


def safe_rlhf_rewards(
    scores: torch.Tensor,
    costs: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
    lagrange: LagrangeMultiplier,
    penalties: torch.Tensor | float = 0.0,
) -> torch.Tensor:
    """PPO-Lagrangian's per-token rewards (Dai et al. 2023): (score - lambda cost) / (1 + lambda) on
    the last token, minus `penalties` (the missing-EOS penalty) there, and -beta KL at every token,
    the KL and penalties at a weight lambda does not change (see LagrangeMultiplier).  (B, T)"""
    return rlhf_rewards(lagrange.penalised(scores, costs) - penalties, logprobs, ref_logprobs, mask, kl_coef)


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over each response.  Returns (advantages, returns), both (B, T).

    delta_t = r_t + gamma * V(s_{t+1}) - V(s_t);  A_t = sum_l (gamma * lam)^l * delta_{t+l}.
    Past the last real token V = 0 and r = 0, so the sum stops at the end of the response.
    """
    rewards, values = rewards * mask, values * mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    steps = rewards.shape[1]
    for t in reversed(range(steps)):
        next_value = values[:, t + 1] if t + 1 < steps else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running
    advantages = advantages * mask
    return advantages, advantages + values


def clipped_surrogate(
    log_ratio: torch.Tensor, advantages: torch.Tensor, clip_low: float, clip_high: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate per token, negated to minimise, and where the clip bit.  (B, T) -> (B, T), (B, T) bool

    L_t = -min(rho_t A_t, clip(rho_t, 1 - eps_low, 1 + eps_high) A_t),  rho_t = exp(log_ratio_t) = pi / pi_old
    (Schulman et al. 2017, eq. 7). clip_high defaults to clip_low; DAPO's clip-higher sets it above
    (Yu et al. 2025: 0.28 against 0.2) so unlikely tokens may still gain probability. `clipped` is
    where the clipped term is the one taken, so the token has no gradient: the clip fraction's
    tokens. Every algorithm's loss is this (rlhf/policy_optimization/algorithms.py): per token, or
    with GSPO's sequence ratio at every token of its sequence."""
    ratio = torch.exp(log_ratio)
    high = clip_low if clip_high is None else clip_high
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_low, 1.0 + high)
    return torch.max(unclipped, clipped), clipped > unclipped


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
    total_tokens: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Clipped value loss: 0.5 * E[max((V - R)^2, (clip(V, V_old +- eps) - R)^2)], the mean over
    `total_tokens` where given (the minibatch's, see masked_mean)."""
    clipped_values = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    return 0.5 * masked_mean(torch.max((values - returns) ** 2, (clipped_values - returns) ** 2), mask, total_tokens)


def entropy(logprobs: torch.Tensor) -> torch.Tensor:
    """Entropy of the categorical at each position, from its log-probabilities.  (B, T, V) -> (B, T)"""
    return -(logprobs.exp() * logprobs).sum(-1)


def repetition_rate(response_ids: torch.Tensor, mask: torch.Tensor, n: int = 3) -> torch.Tensor:
    """Share of each response's n-grams that repeat an earlier n-gram of the same response.  (B,)

    A reward-hacking monitor: a policy that finds a phrase the reward model likes tends to loop it.
    """
    rates = []
    for ids, length in zip(response_ids.tolist(), mask.sum(-1).long().tolist()):
        grams = [tuple(ids[i : i + n]) for i in range(length - n + 1)]
        rates.append(1.0 - len(set(grams)) / len(grams) if grams else 0.0)
    return torch.tensor(rates)

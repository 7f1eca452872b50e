"""What each online algorithm computes, one object per algorithm beside its paper's equations.

The rollout engine (rollout.py) and the loop (trainer.py) are shared; an algorithm says only:
  - `needs_critic`, `needs_cost_model`: which models the stage loads and the trainer optimises
    (every algorithm reads the frozen reference: its KL is in the reward, or in the loss where
    `kl_in_loss`, and is logged as `kl` either way);
  - `advantages(batch, ...)`: the advantages (B, T) and value targets (B, T) from a scored batch;
  - `surrogate(...)`: the per-token policy loss and its clip mask (core.clipped_surrogate), which
    `loss` aggregates as params say and adds a KL term to where `kl_in_loss`;
  - `logs`: the columns it adds to each iteration's row beyond the shared ones.
A new variant is one object here and its name in `train_policy.algorithm` (rlhf/config.py).

Shapes: B = responses, T = response tokens; `mask` (B, T) is 1 on real response tokens. The
critic-free algorithms' responses lie prompt-major in groups of G (estimators.grouped).

References (equations in each object's docstring):
  PPO: Schulman et al. 2017, "Proximal Policy Optimization Algorithms", eq. 7; GAE: Schulman et al.
    2016, eq. 16; RLHF rewards: Ziegler et al. 2019 / Stiennon et al. 2020, eq. 2.
  PPO-Lagrangian: Dai et al. 2023, "Safe RLHF: Safe Reinforcement Learning from Human Feedback", eq. 10-12.
  GRPO: Shao et al. 2024, "DeepSeekMath", eq. 3-4, sec. 4.1.2; Dr. GRPO: Liu et al. 2025.
  RLOO: Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization ...", sec. 3.
  REINFORCE++: Hu 2025, "REINFORCE++: A Simple and Efficient Approach for Aligning LLMs".
  GSPO: Zheng et al. 2025, "Group Sequence Policy Optimization", eq. 5-7.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch

from rlhf.config import TrainPolicyParams
from rlhf.policy_optimization import core, estimators
from rlhf.policy_optimization.estimators import BatchSize

if TYPE_CHECKING:
    from rlhf.policy_optimization.rollout import Rollout


@dataclass
class ScoredBatch:
    """What the advantages read: one rollout, sampled, scored and passed through the reference."""

    scores: torch.Tensor  # (B,) normalised score minus the missing-EOS penalty
    penalties: torch.Tensor  # (B,) the missing-EOS penalty each score carries
    costs: torch.Tensor | None  # (B,) the cost model's P(unsafe); PPO-Lagrangian only
    logprobs: torch.Tensor  # (B, T) log pi_old(a_t | s_t)
    ref_logprobs: torch.Tensor  # (B, T) log pi_ref(a_t | s_t)
    values: torch.Tensor | None  # (B, T) V_old(s_t); None without a critic
    mask: torch.Tensor  # (B, T)


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


class Algorithm:
    """The shared policy loss: the clipped surrogate of `surrogate`, times the rollout correction's
    weights where one is configured, aggregated over the responses in the policy-gradient term as
    `aggregation` says, plus beta * k3(pi_theta, pi_ref) over every response where `kl_in_loss`."""

    name: ClassVar[str]
    needs_critic: ClassVar[bool] = False
    needs_cost_model: ClassVar[bool] = False
    kl_in_loss: ClassVar[bool] = False  # GRPO's k3 loss term; the others carry the KL in their rewards
    logs: ClassVar[tuple[str, ...]] = ()  # columns this algorithm adds to each iteration's row

    def __init__(self, params: TrainPolicyParams):
        self.params = params

    def advantages(
        self, batch: ScoredBatch, kl_coef: float, all_reduce: core.AllReduce | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(advantages (B, T), value targets (B, T) or None without a critic)."""
        raise NotImplementedError

    def aggregation(self) -> estimators.Aggregation:
        return self.params.loss_aggregation

    def surrogate(
        self, logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token loss and clip mask: PPO's ratio per token (Schulman et al. 2017, eq. 7).  (B, T), (B, T)"""
        return core.clipped_surrogate(
            logprobs - old_logprobs, advantages, self.params.clip_range, self.params.clip_range_high
        )

    def loss(
        self, logprobs: torch.Tensor, mb: Rollout, kl_coef: float, counts: MinibatchCounts | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The policy's loss on a micro-batch and its statistics. `counts`: the whole minibatch's
        (default: this micro-batch is the minibatch)."""
        params, counts = self.params, counts or MinibatchCounts.of(mb, None)
        in_policy_term = mb.policy_mask
        losses, clipped = self.surrogate(logprobs, mb.logprobs, mb.advantages, mb.mask)
        if mb.correction is not None:
            losses = losses * mb.correction
        stats = {
            "clip_fraction": core.masked_mean(clipped.float(), in_policy_term),
            # Schulman's k2 estimator of KL(old || new)
            "approx_kl": core.masked_mean(0.5 * (logprobs - mb.logprobs) ** 2, mb.mask),
        }
        loss = estimators.aggregate(losses, in_policy_term, self.aggregation(), params.max_new_tokens, counts.policy)
        if self.kl_in_loss:
            stats["kl_loss"] = estimators.k3_kl_loss(
                logprobs, mb.ref_logprobs, mb.mask, self.aggregation(), params.max_new_tokens, counts.all
            )
            loss = loss + kl_coef * stats["kl_loss"]
        return loss, stats


class PPO(Algorithm):
    """PPO for RLHF (Ouyang et al. 2022; Huang et al. 2024): per-token rewards
    r_t = 1[t = end] score - beta * log(pi_old / pi_ref)(a_t)  (Stiennon et al. 2020, eq. 2),
    A = whiten(GAE(r, V))  (Schulman et al. 2016, eq. 16), whitened over the global batch;
    value targets A + V. Loss: the clipped surrogate, token mean (eq. 7), plus the trainer's clipped
    value loss for the critic."""

    name = "ppo"
    needs_critic = True
    logs = ("value_loss", "critic_grad_norm")

    def rewards(self, batch: ScoredBatch, kl_coef: float) -> torch.Tensor:
        return core.rlhf_rewards(batch.scores, batch.logprobs, batch.ref_logprobs, batch.mask, kl_coef)

    def advantages(self, batch, kl_coef, all_reduce):
        advantages, returns = core.gae(
            self.rewards(batch, kl_coef), batch.values, batch.mask, self.params.gamma, self.params.lam
        )
        return core.whiten(advantages, batch.mask, all_reduce=all_reduce), returns


class PPOLagrangian(PPO):
    """Safe RLHF (Dai et al. 2023): maximise the reward subject to E[cost] <= limit, through the
    Lagrangian's multiplier lambda (core.LagrangeMultiplier, which steps it once per iteration).
    Per-token rewards (score - lambda cost) / (1 + lambda) on the last token, minus the missing-EOS
    penalty there, and -beta KL at every token (core.safe_rlhf_rewards). Departure: one critic
    learns the combined return, where Dai et al. keep a reward critic and a cost critic."""

    name = "ppo_lagrangian"
    needs_cost_model = True
    logs = (*PPO.logs, "cost", "lagrange_multiplier")

    def __init__(self, params: TrainPolicyParams):
        super().__init__(params)
        safety = params.safety
        self.lagrange = core.LagrangeMultiplier(
            safety.lagrange_init, safety.cost_limit, safety.lagrange_lr, safety.lagrange_max
        )

    def rewards(self, batch, kl_coef):
        return core.safe_rlhf_rewards(
            batch.scores + batch.penalties,
            batch.costs,
            batch.logprobs,
            batch.ref_logprobs,
            batch.mask,
            kl_coef,
            self.lagrange,
            batch.penalties,
        )


class GRPO(Algorithm):
    """GRPO (Shao et al. 2024, sec. 4.1.2): A_i,t = (r_i - mean(r_1..r_G)) / std(r_1..r_G) at every
    token (estimators.grpo_advantages; without the std: Dr. GRPO, Liu et al. 2025). The KL is not in
    the reward: the loss adds beta * k3(pi_theta, pi_ref) over every response (eq. 3-4)."""

    name = "grpo"
    kl_in_loss = True
    logs = ("kl_loss",)

    def advantages(self, batch, kl_coef, all_reduce):
        params = self.params
        return estimators.grpo_advantages(
            batch.scores, batch.mask, params.group_size, params.grpo_std_normalization
        ), None


class RLOO(Algorithm):
    """RLOO (Ahmadian et al. 2024, sec. 3): the sequence reward R = r - beta * sum_t log(pi_old /
    pi_ref) (estimators.kl_penalised_scores), baseline the mean of the other G - 1 responses' R:
    A_i = R_i - 1/(G-1) sum_{j != i} R_j at every token (estimators.rloo_advantages)."""

    name = "rloo"

    def advantages(self, batch, kl_coef, all_reduce):
        penalised = estimators.kl_penalised_scores(
            batch.scores, batch.logprobs, batch.ref_logprobs, batch.mask, kl_coef
        )
        return estimators.rloo_advantages(penalised, batch.mask, self.params.group_size), None


class ReinforcePP(Algorithm):
    """REINFORCE++ (Hu 2025): per-token rewards 1[t = end] r - beta * KL_t, returns-to-go, whitened
    over every token of the global batch (estimators.reinforce_pp_advantages)."""

    name = "reinforce_pp"

    def advantages(self, batch, kl_coef, all_reduce):
        return estimators.reinforce_pp_advantages(
            batch.scores, batch.logprobs, batch.ref_logprobs, batch.mask, kl_coef, self.params.gamma, all_reduce
        ), None


class GSPO(GRPO):
    """GSPO (Zheng et al. 2025): GRPO's group-normalised advantages (eq. 6) with the importance
    ratio and its clip at the sequence level:

        s_i = (pi(y_i|x) / pi_old(y_i|x))^(1/|y_i|) = exp(1/|y_i| sum_t log(pi / pi_old)(y_i,t))   (eq. 7)
        J = 1/G sum_i min(s_i A_i, clip(s_i, 1 - eps, 1 + eps) A_i)                                 (eq. 5)

    so a whole response is kept or clipped together and every token of it weighs the same. Here
    each token of response i carries response i's loss and clip mask, and the loss is their
    sequence mean (1/B sum_i 1/|y_i| sum_t), which is eq. 5 whatever `loss_aggregation` says.
    Departures: the paper drops the KL term; GRPO's beta * k3 term stays here (kl_coef 0 removes
    it). Rollout-correction weights, where configured, multiply the tokens' losses as elsewhere."""

    name = "gspo"

    def aggregation(self) -> estimators.Aggregation:
        return "sequence_mean"

    def surrogate(self, logprobs, old_logprobs, advantages, mask):
        lengths = mask.sum(-1, keepdim=True).clamp(min=1)  # (B, 1)
        sequence_log_ratio = ((logprobs - old_logprobs) * mask).sum(-1, keepdim=True) / lengths  # (B, 1) log s_i
        losses, clipped = core.clipped_surrogate(
            sequence_log_ratio.expand_as(mask), advantages, self.params.clip_range, self.params.clip_range_high
        )
        return losses * mask, clipped & (mask > 0)


ALGORITHMS: dict[str, type[Algorithm]] = {
    algorithm.name: algorithm for algorithm in (PPO, PPOLagrangian, GRPO, RLOO, ReinforcePP, GSPO)
}


def algorithm_for(params: TrainPolicyParams) -> Algorithm:
    """The object for `params.algorithm` (every online one; dpo trains offline, in dpo.py)."""
    if params.algorithm not in ALGORITHMS:
        raise ValueError(f"train_policy.algorithm {params.algorithm} is not trained by the online loop")
    return ALGORITHMS[params.algorithm](params)

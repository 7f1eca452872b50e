"""How a rollout's scores become advantages at the edges: a constant calibration batch, dynamic
sampling under a KL-carrying reward, the GRPO KL term at padding, and where the critic starts."""

from __future__ import annotations

import torch
from transformers import AutoTokenizer

from rlhf.config import TrainPolicyParams
from rlhf.policy_optimization import estimators
from rlhf.policy_optimization.algorithms import MinibatchCounts, algorithm_for
from rlhf.policy_optimization.models import critic_start
from rlhf.policy_optimization.rollout import Rollout, ScoreNormalizer, drop_uninformative_groups


def test_a_constant_calibration_batch_centres_the_scores_without_blowing_them_up():
    """A rules reward can score a whole calibration batch the same: its std is 0, and the old floor
    of 1e-6 turned a later score of 1 into a million."""
    for mode in ("initial", "running"):
        normalizer = ScoreNormalizer(mode)
        normalizer.observe(torch.zeros(16))
        assert normalizer(torch.tensor([1.0, 0.0])).tolist() == [1.0, 0.0]
    varied = ScoreNormalizer("initial")
    varied.observe(torch.tensor([0.0, 2.0, 4.0]))
    assert varied(torch.tensor([4.0])).item() == 1.0  # (4 - 2) / 2: scores that vary are standardised


def rollout_of(scores: torch.Tensor, advantages: torch.Tensor) -> Rollout:
    rows, steps = advantages.shape
    mask = torch.ones(rows, steps)
    zeros = torch.zeros(rows, steps)
    ids = torch.ones(rows, steps, dtype=torch.long)
    return Rollout(
        ids,
        torch.ones(rows, 2, dtype=torch.long),
        ids,
        mask,
        zeros,
        None,
        scores,
        advantages * mask,
        None,
        scores,
        torch.zeros(rows),
        zeros,
    )


def test_dynamic_sampling_keeps_rloo_groups_whose_kl_still_gives_them_advantages():
    """RLOO's rewards carry the KL penalty: a group of equal task scores still has advantages
    (seen: [-0.3, 0.1, -0.3, 0.5]), so it is kept; a group with none is dropped."""
    task_scores = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    summed_kl = torch.tensor([0.8, 0.4, 0.8, 0.0, 0.3, 0.3, 0.3, 0.3])
    penalised = task_scores - 1.0 * summed_kl  # estimators.kl_penalised_scores at beta 1
    advantages = estimators.rloo_advantages(penalised, torch.ones(8, 3), group_size=4)
    assert advantages[:4, 0].abs().min() > 0.1 and advantages[4:].abs().max() == 0.0
    rollout = rollout_of(task_scores, advantages)
    dropped = drop_uninformative_groups(rollout, 4, gather=lambda t: t)
    assert rollout.kept.tolist() == [True] * 4 + [False] * 4
    assert dropped == 0.5
    assert torch.equal(rollout.mask, torch.ones(8, 3))  # the rows stay whole: the KL term still sees them


def test_grpo_keeps_dropped_groups_in_its_kl_term():
    """Dynamic sampling removes a group of equal scores from the policy-gradient term only: GRPO's
    k3 KL term regularises every sampled prompt, so its gradient reaches the dropped responses."""
    params = TrainPolicyParams(algorithm="grpo", group_size=2, batch_size=4, minibatch_size=4, dynamic_sampling=True)
    scores = torch.tensor([1.0, 0.0, 0.5, 0.5])
    advantages = estimators.grpo_advantages(scores, torch.ones(4, 3), 2)
    rollout = rollout_of(scores, advantages)
    rollout.ref_logprobs = torch.full((4, 3), -1.0)
    drop_uninformative_groups(rollout, 2, gather=lambda t: t)
    assert rollout.kept.tolist() == [True, True, False, False]
    logprobs = torch.full((4, 3), -2.0, requires_grad=True)
    loss, stats = algorithm_for(params).loss(logprobs, rollout, 0.5, MinibatchCounts.of(rollout, None))
    loss.backward()
    assert torch.all(logprobs.grad[2:] != 0)  # the dropped group: the KL's pull only
    assert stats["kl_loss"].item() > 0


def test_the_grpo_kl_term_is_finite_where_padding_holds_a_very_unlikely_token():
    """The current policy's log-prob at a pad position (-95) against a masked reference (0): k3's
    expm1(95) overflowed to inf and inf * 0 gave NaN."""
    logprobs = torch.tensor([[-1.0, -95.0]], requires_grad=True)
    ref = torch.tensor([[-1.5, 0.0]])
    mask = torch.tensor([[1.0, 0.0]])
    for mode in ("token_mean", "sequence_mean", "constant_length"):
        loss = estimators.k3_kl_loss(logprobs, ref, mask, mode, max_length=2)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(logprobs.grad).all()
        logprobs.grad = None


def test_the_critic_starts_from_the_reward_model_only_when_it_is_the_online_reward(tmp_path, tiny_tokenizer):
    """With a rules, remote, judge or weighted reward the reward model's head values something
    else: rescaling it by that reward's statistics would start the critic on a wrong scale."""
    tiny_tokenizer.save_pretrained(tmp_path / "tok")
    same = AutoTokenizer.from_pretrained(tmp_path / "tok")
    policy_dir, reward_dir = tmp_path / "policy", tmp_path / "reward"
    assert critic_start(policy_dir, reward_dir, tiny_tokenizer, same, True) == reward_dir
    assert critic_start(policy_dir, reward_dir, tiny_tokenizer, same, False) == policy_dir

"""The PPO equations against plain loops and hand-computed values."""

import math

import pytest
import torch

from rlhf.policy_optimization import core


def gae_reference(rewards, values, length, gamma, lam):
    """GAE for one response, as a plain Python loop over its real tokens."""
    advantages = [0.0] * length
    running = 0.0
    for t in reversed(range(length)):
        next_value = values[t + 1] if t + 1 < length else 0.0
        delta = rewards[t] + gamma * next_value - values[t]
        running = delta + gamma * lam * running
        advantages[t] = running
    return advantages


def test_gae_matches_plain_loop_on_random_padded_batch():
    torch.manual_seed(0)
    batch, steps = 6, 9
    rewards, values = torch.randn(batch, steps), torch.randn(batch, steps)
    lengths = [9, 1, 4, 7, 2, 9]
    mask = torch.tensor([[1.0] * n + [0.0] * (steps - n) for n in lengths])
    advantages, returns = core.gae(rewards, values, mask, gamma=0.97, lam=0.9)
    for row, n in enumerate(lengths):
        expected = gae_reference(rewards[row].tolist(), values[row].tolist(), n, 0.97, 0.9)
        assert torch.allclose(advantages[row, :n], torch.tensor(expected), atol=1e-5)
        assert torch.all(advantages[row, n:] == 0)
        assert torch.allclose(returns[row, :n], advantages[row, :n] + values[row, :n])


def test_clipped_policy_loss_matches_hand_computation():
    old = torch.log(torch.tensor([[0.5, 0.5, 0.5]]))
    new = torch.log(torch.tensor([[0.75, 0.25, 0.55]]))  # ratios 1.5, 0.5, 1.1
    advantages = torch.tensor([[1.0, 1.0, -2.0]])
    losses, clipped = core.clipped_surrogate(new - old, advantages, clip_low=0.2)
    # token 1: ratio 1.5, A=+1 -> min(1.5, 1.2) = 1.2 (the clip binds); token 2: ratio 0.5, A=+1 ->
    # min(0.5, 0.8) = 0.5 (it does not); token 3: ratio 1.1 (inside the clip), A=-2 -> -2.2.
    assert torch.allclose(losses, torch.tensor([[-1.2, -0.5, 2.2]]))
    assert clipped.tolist() == [[True, False, False]]
    assert math.isclose(core.masked_mean(losses, torch.ones(1, 3)).item(), -(1.2 + 0.5 - 2.2) / 3, rel_tol=1e-5)
    # clip-higher (DAPO): eps_high 0.28 lets the first token's ratio reach 1.28
    higher, clipped = core.clipped_surrogate(new - old, advantages, clip_low=0.2, clip_high=0.28)
    assert torch.allclose(higher, torch.tensor([[-1.28, -0.5, 2.2]]))
    assert clipped.tolist() == [[True, False, False]]
    # a negative advantage clips below: ratio 0.5 with A = -1 is held at 0.8
    low, clipped = core.clipped_surrogate(new - old, -torch.ones(1, 3), clip_low=0.2)
    assert torch.allclose(low, torch.tensor([[1.5, 0.8, 1.1]]))
    assert clipped.tolist() == [[False, True, False]]


def test_clipped_value_loss_matches_hand_computation():
    old_values = torch.tensor([[0.0, 1.0]])
    values = torch.tensor([[0.5, 1.1]])
    returns = torch.tensor([[1.0, 0.0]])
    loss = core.value_loss(values, old_values, returns, torch.ones(1, 2), clip_range=0.2)
    # token 1: unclipped (0.5-1)^2 = 0.25, clipped V=0.2 -> 0.64 -> 0.64; token 2: 1.21 vs 1.21 -> 1.21
    assert math.isclose(loss.item(), 0.5 * (0.64 + 1.21) / 2, rel_tol=1e-5)


def test_rewards_put_score_on_last_real_token_and_kl_everywhere():
    logprobs = torch.tensor([[-1.0, -1.0, -1.0], [-2.0, 0.0, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5], [-1.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    rewards = core.rlhf_rewards(torch.tensor([2.0, -1.0]), logprobs, ref, mask, kl_coef=0.1)
    expected = torch.tensor([[-0.05, 0.0, 0.05 + 2.0], [0.1 - 1.0, 0.0, 0.0]])
    assert torch.allclose(rewards, expected, atol=1e-6)


def test_whiten_gives_zero_mean_unit_variance_over_mask_only():
    values = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    whitened = core.whiten(values, mask)
    assert abs(core.masked_mean(whitened, mask).item()) < 1e-6
    assert abs(core.masked_var(whitened, mask).item() - 1.0) < 1e-4


def test_k1_and_k3_estimators_match_hand_values():
    logprobs, ref = torch.log(torch.tensor([[0.5, 0.2]])), torch.log(torch.tensor([[0.25, 0.4]]))
    # k1 = log(p/q): log 2, log 0.5.  k3 = (r - 1) - log r with r = q/p = 0.5, 2
    assert torch.allclose(core.kl_per_token(logprobs, ref, "k1"), torch.tensor([[math.log(2), math.log(0.5)]]))
    k3 = core.kl_per_token(logprobs, ref, "k3")
    assert torch.allclose(k3, torch.tensor([[-0.5 - math.log(0.5), 1.0 - math.log(2.0)]]), atol=1e-6)
    assert (k3 >= 0).all()


def test_k3_estimates_the_true_kl_without_bias():
    torch.manual_seed(0)
    p, q = torch.softmax(torch.randn(50), 0), torch.softmax(torch.randn(50), 0)
    true_kl = (p * (p / q).log()).sum()
    samples = torch.multinomial(p, 200_000, replacement=True)
    estimate = core.kl_per_token(p.log()[samples], q.log()[samples], "k3").mean()
    assert abs(estimate - true_kl) < 0.02 * true_kl + 0.005


def test_adaptive_kl_controller_raises_beta_above_target_and_lowers_it_below():
    above = core.AdaptiveKLController(0.1, target_kl=6.0, horizon=10_000)
    above.update(current_kl=12.0, episodes=1000)  # error clipped to +0.2 -> beta * (1 + 0.2 * 0.1)
    assert math.isclose(above.value, 0.1 * 1.02)
    below = core.AdaptiveKLController(0.1, target_kl=6.0, horizon=10_000)
    below.update(current_kl=5.4, episodes=1000)  # error -0.1 -> beta * (1 - 0.01)
    assert math.isclose(below.value, 0.1 * 0.99)
    on_target = core.AdaptiveKLController(0.1, target_kl=6.0, horizon=10_000)
    on_target.update(current_kl=6.0, episodes=1000)
    assert on_target.value == 0.1
    restored = core.AdaptiveKLController(0.5, 6.0, 10_000)
    restored.load_state_dict(above.state_dict())
    assert restored.value == above.value


def test_repetition_rate_counts_repeated_ngrams_within_each_response():
    ids = torch.tensor([[1, 2, 3, 1, 2, 3, 9], [1, 2, 3, 4, 5, 6, 7]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1, 1]])
    # row 0: trigrams 123 231 312 123 -> 1 of 4 repeats; row 1: all distinct
    assert core.repetition_rate(ids, mask).tolist() == [0.25, 0.0]


def test_whiten_over_processes_equals_whiten_over_the_joined_batch():
    torch.manual_seed(0)
    values, mask = torch.randn(6, 5), (torch.rand(6, 5) > 0.3).float()
    halves = [(values[:3], mask[:3]), (values[3:], mask[3:])]

    def all_reduce_for(rank):  # what the other process would contribute to the sum
        other = halves[1 - rank]
        return lambda local: (
            local
            + torch.stack([(other[0] * other[1]).sum(), (other[0] ** 2 * other[1]).sum(), other[1].sum()]).double()
        )

    joined = core.whiten(values, mask)
    for rank, (v, m) in enumerate(halves):
        split = core.whiten(v, m, all_reduce=all_reduce_for(rank))
        assert torch.allclose(split * m, joined[3 * rank : 3 * rank + 3] * m, atol=1e-5)


@pytest.mark.parametrize("lagrange_value", [0.0, 1.0, 20.0])
def test_ppo_lagrangian_keeps_the_kl_and_eos_penalty_at_a_fixed_weight_whatever_lambda(lagrange_value):
    """Safe RLHF's reference code puts -beta KL on the reward side and +beta KL on the cost side and
    combines (A_r - lambda A_c) / (1 + lambda): the KL's weight is beta at any lambda; only score and
    cost trade against each other. (The old convention divided the whole task side by 1 + lambda:
    the KL 21 times weaker at lambda 20.) The missing-EOS penalty, a regulariser too, is not divided."""
    logprobs = torch.tensor([[-1.0, -1.0, -2.0]])
    ref = torch.tensor([[-1.5, -1.0, -2.0]])  # KL 0.5 on the first token only
    mask = torch.ones(1, 3)
    lagrange = core.LagrangeMultiplier(lagrange_value, limit=0.1, lr=1.0, maximum=20.0)
    score, cost, beta, penalty = torch.tensor([2.0]), torch.tensor([0.25]), 0.1, torch.tensor([1.0])
    rewards = core.safe_rlhf_rewards(score, cost, logprobs, ref, mask, beta, lagrange, penalty)
    combined = (2.0 - lagrange_value * 0.25) / (1 + lagrange_value)
    assert rewards[0].tolist() == pytest.approx([-beta * 0.5, 0.0, combined - 1.0])
    # Safe RLHF's two critics' rewards, combined as its actor loss combines their advantages:
    reward_side, cost_side = torch.tensor([-beta * 0.5, 0.0, 2.0]), torch.tensor([beta * 0.5, 0.0, 0.25])
    combined_sides = (reward_side - lagrange_value * cost_side) / (1 + lagrange_value)
    assert combined_sides.tolist() == pytest.approx([-beta * 0.5, 0.0, combined])

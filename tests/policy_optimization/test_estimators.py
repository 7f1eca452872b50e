"""The critic-free estimators (rlhf.policy_optimization.estimators) against hand-computed values."""

import math

import pytest
import torch

from rlhf.policy_optimization import estimators

# Two responses of 3 real tokens, one of 1: the advantages must land on real tokens only.
MASK_4 = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])


def on_tokens(advantages: torch.Tensor, expected: list[float], mask: torch.Tensor) -> None:
    """Each row of `advantages` holds its expected sequence value on every real token, 0 on padding."""
    assert torch.allclose(advantages, torch.tensor(expected)[:, None] * mask, atol=1e-5)


# --- GRPO and Dr. GRPO ---------------------------------------------------------------------------


def test_grpo_group_of_four_against_hand_computation():
    scores = torch.tensor([1.0, 2.0, 3.0, 6.0])
    # mean 3; deviations -2, -1, 0, 3; unbiased var (4 + 1 + 0 + 9) / 3 = 14/3
    std = math.sqrt(14 / 3)
    advantages = estimators.grpo_advantages(scores, MASK_4, group_size=4)
    on_tokens(advantages, [-2 / std, -1 / std, 0.0, 3 / std], MASK_4)


def test_grpo_ties_share_an_advantage():
    scores = torch.tensor([0.0, 1.0, 1.0, 0.0])  # a verifiable reward: two right, two wrong
    # mean 0.5; deviations -0.5, 0.5, 0.5, -0.5; unbiased var 4 * 0.25 / 3 = 1/3
    a = 0.5 / math.sqrt(1 / 3)
    on_tokens(estimators.grpo_advantages(scores, MASK_4, 4), [-a, a, a, -a], MASK_4)


def test_dr_grpo_drops_the_std():
    scores = torch.tensor([1.0, 2.0, 3.0, 6.0])
    on_tokens(estimators.dr_grpo_advantages(scores, MASK_4, 4), [-2.0, -1.0, 0.0, 3.0], MASK_4)


def test_grpo_equal_rewards_give_zero_advantage_not_nan():
    scores = torch.full((4,), 0.7)
    for advantages in (estimators.grpo_advantages(scores, MASK_4, 4), estimators.dr_grpo_advantages(scores, MASK_4, 4)):
        assert torch.all(advantages == 0)


def test_grpo_normalises_per_group():
    # group B is group A times 10 plus 100: GRPO's advantages are the same for both
    scores = torch.tensor([1.0, 2.0, 3.0, 6.0, 110.0, 120.0, 130.0, 160.0])
    mask = torch.ones(8, 1)
    advantages = estimators.grpo_advantages(scores, mask, group_size=4)[:, 0]
    assert torch.allclose(advantages[:4], advantages[4:], atol=1e-5)
    assert torch.allclose(advantages.view(2, 4).sum(-1), torch.zeros(2), atol=1e-5)


def test_group_size_must_divide_the_batch():
    with pytest.raises(ValueError, match="groups of 3"):
        estimators.grpo_advantages(torch.zeros(4), torch.ones(4, 1), group_size=3)


# --- RLOO ----------------------------------------------------------------------------------------


def test_rloo_group_of_four_against_hand_computation():
    scores = torch.tensor([1.0, 2.0, 3.0, 6.0])  # sum 12
    # A_i = r_i - (12 - r_i) / 3: 1 - 11/3, 2 - 10/3, 3 - 9/3, 6 - 6/3
    expected = [1 - 11 / 3, 2 - 10 / 3, 0.0, 4.0]
    on_tokens(estimators.rloo_advantages(scores, MASK_4, 4), expected, MASK_4)
    # the identity A_i = G/(G-1) (r_i - mean)
    on_tokens(estimators.rloo_advantages(scores, MASK_4, 4), [4 / 3 * d for d in (-2, -1, 0, 3)], MASK_4)


def test_rloo_ties_and_equal_groups():
    on_tokens(
        estimators.rloo_advantages(torch.tensor([0.0, 1.0, 1.0, 0.0]), MASK_4, 4),
        [-2 / 3, 2 / 3, 2 / 3, -2 / 3],
        MASK_4,
    )
    assert torch.all(estimators.rloo_advantages(torch.full((4,), 3.0), MASK_4, 4) == 0)


def test_rloo_baselines_per_group_without_rescaling():
    scores = torch.tensor([1.0, 2.0, 3.0, 6.0, 110.0, 120.0, 130.0, 160.0])
    advantages = estimators.rloo_advantages(scores, torch.ones(8, 1), 4)[:, 0]
    assert torch.allclose(advantages[4:], 10 * advantages[:4], atol=1e-4)  # the offset 100 is gone, the scale kept


def test_rloo_needs_two_responses_per_prompt():
    with pytest.raises(ValueError, match="at least 2"):
        estimators.rloo_advantages(torch.zeros(3), torch.ones(3, 1), 1)


def test_kl_penalised_scores_subtract_the_summed_log_ratio():
    logprobs = torch.tensor([[-1.0, -2.0, -9.0], [-0.5, -0.5, -0.5]])
    ref = torch.tensor([[-1.5, -1.0, 0.0], [-0.5, -1.0, -0.5]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])  # the -9 is padding
    # row 0: k1 = 0.5 + (-1.0) = -0.5; row 1: 0 + 0.5 + 0 = 0.5
    penalised = estimators.kl_penalised_scores(torch.tensor([1.0, 1.0]), logprobs, ref, mask, kl_coef=0.1)
    assert torch.allclose(penalised, torch.tensor([1.05, 0.95]))


# --- REINFORCE++ ---------------------------------------------------------------------------------


def test_returns_to_go_against_a_loop():
    rewards = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    gamma = 0.9
    expected = torch.tensor([[1 + 0.9 * 2 + 0.81 * 3, 2 + 0.9 * 3, 3.0], [4 + 0.9 * 5, 5.0, 0.0]])
    assert torch.allclose(estimators.returns_to_go(rewards, mask, gamma), expected)


def test_reinforce_pp_token_rewards_returns_and_global_whitening():
    logprobs = torch.tensor([[-1.0, -1.0], [-1.0, -1.0]])
    ref = torch.tensor([[-1.5, -1.0], [-1.0, -2.0]])  # k1 per token: 0.5, 0; 0, 1
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])  # the second response is one token
    scores = torch.tensor([2.0, 1.0])
    # token rewards (beta 0.2): row 0: -0.1, 2; row 1: 1 (its score; the KL of 0 at its only token)
    # returns-to-go (gamma 1): row 0: 1.9, 2; row 1: 1
    returns = torch.tensor([1.9, 2.0, 1.0])
    expected = (returns - returns.mean()) / returns.var(unbiased=False).sqrt()
    advantages = estimators.reinforce_pp_advantages(scores, logprobs, ref, mask, kl_coef=0.2)
    assert torch.allclose(advantages[mask.bool()], expected, atol=1e-4)
    assert advantages[1, 1] == 0


def test_reinforce_pp_normalises_over_the_global_batch_not_per_group():
    scores = torch.tensor([1.0, 2.0, 3.0, 6.0, 110.0, 120.0, 130.0, 160.0])
    mask, logprobs = torch.ones(8, 1), torch.zeros(8, 1)
    advantages = estimators.reinforce_pp_advantages(scores, logprobs, logprobs, mask, kl_coef=0.1)[:, 0]
    expected = (scores - scores.mean()) / scores.var(unbiased=False).sqrt()
    assert torch.allclose(advantages, expected, atol=1e-5)
    assert torch.all(advantages[:4] < 0) and torch.all(advantages[4:] > 0)  # group A loses to group B as a whole


def test_reinforce_pp_whitening_through_all_reduce_matches_one_batch():
    torch.manual_seed(0)
    scores, logprobs, ref = torch.randn(6), torch.randn(6, 4), torch.randn(6, 4)
    mask = torch.tensor([[1.0] * n + [0.0] * (4 - n) for n in (4, 1, 3, 2, 4, 4)])
    whole = estimators.reinforce_pp_advantages(scores, logprobs, ref, mask, 0.1)
    # two "processes" of 3 rows each, whose all_reduce sums their moments
    halves = [slice(0, 3), slice(3, 6)]
    rewards = [
        estimators.returns_to_go(
            estimators.core.rlhf_rewards(scores[h], logprobs[h], ref[h], mask[h], 0.1), mask[h], 1.0
        )
        for h in halves
    ]
    moments = [
        torch.stack([(r * mask[h]).sum(), (r**2 * mask[h]).sum(), mask[h].sum()]).double()
        for r, h in zip(rewards, halves)
    ]
    total = moments[0] + moments[1]
    for h in halves:
        part = estimators.reinforce_pp_advantages(
            scores[h], logprobs[h], ref[h], mask[h], 0.1, all_reduce=lambda _: total
        )
        assert torch.allclose(part, whole[h], atol=1e-5)


# --- DAPO's dynamic sampling ---------------------------------------------------------------------


def test_dynamic_sampling_drops_groups_of_equal_rewards():
    scores = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    keep = estimators.dynamic_sampling_mask(scores, group_size=4)
    assert keep.tolist() == [False] * 4 + [True] * 4 + [False] * 4
    # what survives still has well-defined, non-zero advantages
    kept = estimators.grpo_advantages(scores[keep], torch.ones(4, 1), 4)
    assert torch.all(kept != 0)


def test_dynamic_sampling_tolerance():
    scores = torch.tensor([0.5, 0.5001, 0.2, 0.9])
    assert estimators.dynamic_sampling_mask(scores, 2).tolist() == [True, True, True, True]
    assert estimators.dynamic_sampling_mask(scores, 2, tolerance=1e-3).tolist() == [False, False, True, True]


# --- the loss aggregations (the clipped surrogate: test_ppo_core) ---------------------------------------------


def test_aggregations_on_a_small_masked_tensor():
    losses = torch.tensor([[1.0, 2.0, 3.0, 99.0], [4.0, 99.0, 99.0, 99.0]])  # 99: padding
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    # token mean: (1 + 2 + 3 + 4) / 4 tokens
    assert math.isclose(estimators.aggregate(losses, mask, "token_mean").item(), 10 / 4)
    # sequence mean: (mean(1, 2, 3) + mean(4)) / 2 = (2 + 4) / 2
    assert math.isclose(estimators.aggregate(losses, mask, "sequence_mean").item(), 3.0)
    # Dr. GRPO: the token sum over B * L = 2 * 5
    assert math.isclose(estimators.aggregate(losses, mask, "constant_length", max_length=5).item(), 10 / 10)
    with pytest.raises(ValueError, match="max_length"):
        estimators.aggregate(losses, mask, "constant_length")
    with pytest.raises(ValueError, match="unknown"):
        estimators.aggregate(losses, mask, "sum")


def test_constant_length_gradient_does_not_depend_on_length():
    """Under sequence_mean a token of a long response gets a smaller gradient; under constant_length not."""
    losses = torch.ones(2, 4, requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
    estimators.aggregate(losses, mask, "sequence_mean").backward()
    assert losses.grad[0, 0] < losses.grad[1, 0]
    losses.grad = None
    estimators.aggregate(losses, mask, "constant_length", max_length=4).backward()
    assert losses.grad[0, 0] == losses.grad[1, 0]


# --- the k3 KL loss ------------------------------------------------------------------------------


def test_k3_value_against_hand_computation():
    logprobs = torch.log(torch.tensor([[0.5, 0.2]]))
    ref = torch.log(torch.tensor([[0.25, 0.2]]))  # rho = 0.5 at the first token, 1 at the second
    expected = (0.5 - 1 - math.log(0.5) + 0.0) / 2
    assert math.isclose(estimators.k3_kl_loss(logprobs, ref, torch.ones(1, 2)).item(), expected, rel_tol=1e-5)


def test_k3_gradient_sign_near_the_reference():
    """Minimising k3 pushes log pi(a) down where pi(a) > pi_ref(a), up where it is below, and not at all at it."""
    ref = torch.log(torch.tensor([[0.3, 0.3, 0.3]]))
    logprobs = torch.log(torch.tensor([[0.31, 0.3, 0.29]])).requires_grad_(True)
    estimators.k3_kl_loss(logprobs, ref, torch.ones(1, 3)).backward()
    grad = logprobs.grad[0]
    assert grad[0] > 0 and grad[2] < 0 and abs(grad[1]) < 1e-7


def test_k3_estimates_forward_kl_and_its_gradient_is_the_reverse_kls():
    """Exact expectations over a 5-token categorical: E_pi[k3] = KL(pi || ref); E_pi[grad k3] = grad KL(ref || pi)."""
    torch.manual_seed(0)
    logits, ref_logits = torch.randn(5, requires_grad=True), torch.randn(5)
    log_pi, log_ref = torch.log_softmax(logits, -1), torch.log_softmax(ref_logits, -1)
    weights = log_pi.exp().detach()  # a ~ pi: the sampling distribution, held fixed

    def expected_k3():
        per_action = estimators.core.kl_per_token(torch.log_softmax(logits, -1), log_ref, "k3")
        return (weights * per_action).sum()

    forward_kl = (log_pi.exp() * (log_pi - log_ref)).sum()
    assert torch.allclose(expected_k3(), forward_kl, atol=1e-6)
    (k3_grad,) = torch.autograd.grad(expected_k3(), logits)
    reverse_kl = (log_ref.exp() * (log_ref - torch.log_softmax(logits, -1))).sum()
    (reverse_grad,) = torch.autograd.grad(reverse_kl, logits)
    (forward_grad,) = torch.autograd.grad((log_pi.exp() * (log_pi - log_ref)).sum(), logits)
    assert torch.allclose(k3_grad, reverse_grad, atol=1e-6)
    assert not torch.allclose(k3_grad, forward_grad, atol=1e-3)  # far from the reference they differ

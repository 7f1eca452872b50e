"""Each algorithm's object against its paper's equation, and what each says it needs."""

import math
import typing

import pytest
import torch

from rlhf.config import OFFLINE, TrainPolicyParams
from rlhf.policy_optimization import estimators
from rlhf.policy_optimization.algorithms import GSPO, MinibatchCounts, algorithm_for
from rlhf.policy_optimization.rollout import Rollout
from rlhf.policy_optimization.trainer import train_policy
from tests.support.policy_runs import PROMPTS, TokenCountReward, critic_free_models, tiny_models, toy_params


def rollout_of(logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor) -> Rollout:
    rows, steps = mask.shape
    zeros = torch.zeros(rows)
    return Rollout(
        torch.ones(rows, 1, dtype=torch.long),
        torch.ones(rows, 1),
        torch.ones(rows, steps, dtype=torch.long),
        mask,
        logprobs,
        None,
        zeros,
        advantages,
        None,
        zeros,
        zeros,
        logprobs.clone(),  # the reference where pi_old is: GRPO's k3 term adds nothing at kl_coef 0
    )


def test_gspo_clips_whole_sequences_by_their_length_normalised_ratio():
    """Zheng et al. 2025, eq. 5-7: s_i = exp(1/|y_i| sum_t log(pi/pi_old)), J = 1/G sum_i
    min(s_i A_i, clip(s_i, 1 - eps, 1 + eps) A_i). Response 0's mean log-ratio 0.2 puts s_0 = 1.221
    above 1.2, so all of it clips (no gradient), though its first token's own ratio (0.905) is inside
    the band, and its third's (1.49) would clip alone under PPO."""
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    log_ratio = torch.tensor([[-0.1, 0.3, 0.4], [0.1, 0.0, 0.0], [-0.5, 0.1, 0.0]])
    old = torch.full((3, 3), -2.0) * mask
    logprobs = (old + log_ratio).requires_grad_(True)
    advantages = estimators.per_token(torch.tensor([1.0, -1.0, 2.0]), mask)
    params = TrainPolicyParams(algorithm="grpo", group_size=3, batch_size=3, minibatch_size=3, clip_range=0.2)
    rollout = rollout_of(old, advantages, mask)
    loss, stats = GSPO(params).loss(logprobs, rollout, 0.0, MinibatchCounts.of(rollout, None))
    loss.backward()

    lengths = [3, 1, 2]
    s = [math.exp(sum(log_ratio[i, :n].tolist()) / n) for i, n in enumerate(lengths)]  # 1.221, 1.105, 0.819
    A = [1.0, -1.0, 2.0]
    expected = -sum(min(s[i] * A[i], min(max(s[i], 0.8), 1.2) * A[i]) for i in range(3)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # d(-s_i A_i / G)/d log pi_t = -A_i s_i / (G |y_i|) on each token of an unclipped response
    for i, n in enumerate(lengths):
        want = 0.0 if i == 0 else -A[i] * s[i] / (3 * n)
        assert torch.allclose(logprobs.grad[i, :n], torch.full((n,), want), atol=1e-6)
        assert torch.all(logprobs.grad[i, n:] == 0)
    assert stats["clip_fraction"].item() == pytest.approx(3 / 6)  # response 0's three tokens of six


def test_gspo_is_a_sequence_mean_whatever_the_loss_aggregation_says():
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    old = torch.full((2, 3), -1.0) * mask
    advantages = estimators.per_token(torch.tensor([1.0, -1.0]), mask)
    rollout = rollout_of(old, advantages, mask)
    losses = []
    for aggregation in ("token_mean", "sequence_mean", "constant_length"):
        params = TrainPolicyParams(algorithm="grpo", group_size=2, batch_size=2, minibatch_size=2)
        params = params.model_copy(update={"loss_aggregation": aggregation})
        losses.append(GSPO(params).loss(old.clone(), rollout, 0.0)[0].item())
    assert losses == [pytest.approx(0.0)] * 3  # at pi = pi_old: -(1 * 1 - 1 * 1) / 2, per response


ONLINE = [a for a in typing.get_args(TrainPolicyParams.model_fields["algorithm"].annotation) if a not in OFFLINE]


@pytest.mark.parametrize("name", ONLINE)
def test_each_algorithm_says_what_it_needs_as_the_schema_does(name):
    params = TrainPolicyParams(algorithm=name)
    algorithm = algorithm_for(params)
    assert algorithm.name == name
    assert algorithm.needs_critic == (not params.critic_free)
    assert algorithm.needs_cost_model == (name == "ppo_lagrangian")
    assert algorithm.kl_in_loss == (name in ("grpo", "gspo"))  # GSPO keeps GRPO's k3 term


def test_dpo_is_not_an_online_algorithm():
    with pytest.raises(ValueError, match="not trained by the online loop"):
        algorithm_for(TrainPolicyParams(algorithm="dpo"))


ALL_LOGGED = {column for name in ONLINE for column in algorithm_for(TrainPolicyParams(algorithm=name)).logs}


@pytest.mark.parametrize("name", ONLINE)
def test_an_iteration_logs_what_its_algorithm_says_and_no_other_algorithms_columns(tiny_tokenizer, name):
    params = toy_params(algorithm=name, iterations=1, batch_size=8, minibatch_size=8, ppo_epochs=1, max_new_tokens=6)
    models = (
        tiny_models(tiny_tokenizer, params) if not params.critic_free else critic_free_models(tiny_tokenizer, params)
    )
    cost = {"cost_scorer": lambda prompts, responses: torch.zeros(len(responses))} if name == "ppo_lagrangian" else {}
    reward = TokenCountReward(tiny_tokenizer)
    row = train_policy(models, reward, tiny_tokenizer, PROMPTS, params, 0, log=lambda r: 0, **cost).history[-1]
    logs = set(algorithm_for(params).logs)
    assert logs <= set(row)
    assert not (ALL_LOGGED - logs) & set(row)

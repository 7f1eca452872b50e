"""Rollout-training mismatch correction: TIS and MIS weights, per token and per sequence, and the
real drift under bf16 autocast on CPU that they correct."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from rlhf.config import TrainPolicyParams
from rlhf.policy_optimization.rollout import ScoreNormalizer, collect_rollout
from rlhf.policy_optimization.rollout_correction import importance_weights
from rlhf.policy_optimization.trainer import train_policy
from rlhf.policy_optimization.update import recompute_logprobs
from tests.support.policy_runs import PROMPTS, TokenCountReward, tiny_models, toy_params

# Row 0: token weights 1, 3, 1/3, 1.5 (sequence weight 1.5); row 1: 2.5, 1.6, padding (sequence 4).
OLD = torch.tensor([[0.0, math.log(3), -math.log(3), math.log(1.5)], [math.log(2.5), math.log(1.6), -7.0, -7.0]])
ROLLOUT = torch.zeros(2, 4)
MASK = torch.tensor([[1.0, 1, 1, 1], [1, 1, 0, 0]])


@pytest.mark.parametrize(
    "mode,weights,corrected",
    [
        ("token_truncate", [[1, 2, 1 / 3, 1.5], [2, 1.6, 0, 0]], [[0, 1, 0, 0], [1, 0, 0, 0]]),
        ("token_mask", [[1, 0, 0, 1], [0, 1, 0, 0]], [[0, 1, 1, 0], [1, 0, 0, 0]]),
        ("sequence_truncate", [[1.5] * 4, [2, 2, 0, 0]], [[0] * 4, [1, 1, 0, 0]]),
        ("sequence_mask", [[1] * 4, [0] * 4], [[0] * 4, [1, 1, 0, 0]]),
        ("none", [[1] * 4, [1, 1, 1, 1]], [[0] * 4, [0] * 4]),
    ],
)
def test_importance_weights_by_mode(mode, weights, corrected):
    got, where = importance_weights(OLD, ROLLOUT, MASK, mode, threshold=2.0)
    assert got.flatten().tolist() == pytest.approx(torch.tensor(weights, dtype=torch.float64).flatten().tolist())
    assert where.long().tolist() == corrected


def test_the_correction_needs_the_trainers_logprobs():
    with pytest.raises(ValueError, match="rollout_correction: needs recompute_old_logprobs"):
        TrainPolicyParams(rollout_correction="token_truncate")


def collect(tokenizer, params, bf16: bool):
    models = tiny_models(tokenizer, params)
    recompute = functools.partial(recompute_logprobs, models.trained, params)
    torch.manual_seed(3)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        return collect_rollout(
            models,
            TokenCountReward(tokenizer),
            ScoreNormalizer("none"),
            tokenizer,
            PROMPTS[:16],
            params,
            0.1,
            recompute_logprobs=recompute,
        )


@pytest.mark.parametrize("mode", ["token_mask", "token_truncate"])
def test_under_bf16_autocast_the_drift_is_real_and_the_correction_bites_where_it_should(tiny_tokenizer, mode):
    """The sampler's KV-cached decode and the update's full forward round differently in bf16; in
    fp32 they agree, and nothing is corrected."""
    torch.set_num_threads(1)
    params = toy_params(
        batch_size=16, recompute_old_logprobs=True, rollout_correction=mode, rollout_correction_threshold=1.0001
    )
    rollout, stats = collect(tiny_tokenizer, params, bf16=True)
    # seen: a mean drift of 1.3e-5 nats per token (up to 5e-4) in bf16 against 5e-8 in fp32
    assert stats["rollout_logprob_drift"] > 1e-6
    log_w = (rollout.logprobs - rollout.rollout_logprobs) * rollout.mask
    outside = (log_w.abs() > math.log(1.0001)) if mode == "token_mask" else (log_w > math.log(1.0001))
    outside &= rollout.mask > 0
    assert 0 < outside.sum() < rollout.mask.sum()
    assert stats["rollout_corrected_share"] == pytest.approx(outside.sum().item() / rollout.mask.sum().item())
    if mode == "token_mask":
        assert torch.all(rollout.correction[outside] == 0) and torch.all(
            rollout.correction[~outside & (rollout.mask > 0)] == 1
        )
    else:
        assert rollout.correction.max() <= 1.0001 + 1e-6
    _, fp32 = collect(tiny_tokenizer, params, bf16=False)
    assert fp32["rollout_logprob_drift"] < 1e-6 and fp32["rollout_corrected_share"] == 0.0


@pytest.fixture
def fresh_accelerator_state():
    """accelerate keeps one mixed-precision setting per process: this test's bf16 must neither meet
    an earlier test's fp32 state nor leave its own to the next test."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_a_run_with_the_correction_logs_its_share_and_learns(tiny_tokenizer, fresh_accelerator_state):
    torch.set_num_threads(1)
    params = toy_params(
        iterations=6,
        mixed_precision="bf16",
        recompute_old_logprobs=True,
        rollout_correction="sequence_truncate",
        eval_every=0,
    )
    models = tiny_models(tiny_tokenizer, params)
    result = train_policy(
        models, TokenCountReward(tiny_tokenizer), tiny_tokenizer, PROMPTS, params, seed=0, log=lambda row: None
    )
    history = result.history
    assert all("rollout_corrected_share" in row and "rollout_logprob_drift" in row for row in history)
    assert history[-1]["raw_score"] > history[0]["raw_score"]

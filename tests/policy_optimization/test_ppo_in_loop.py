"""What a PPO iteration reports (phase times, throughput, memory, grad norm, samples tables) and the
in-loop evaluation: it leaves training's random stream alone, and keep: best keeps its best policy,
also across a resume."""

import pytest
import torch

from rlhf.config import TrainPolicyParams
from rlhf.demo import domain
from rlhf.policy_optimization.in_loop_eval import WinRateVsStart, remember_if_best
from rlhf.policy_optimization.trainer import TrainerState
from tests.support.policy_runs import PROMPTS, TokenCountReward, tiny_models, train_on_toy

HELD_OUT = [prompt for prompt, _ in domain.all_prompts()[40:56]]  # not among the training PROMPTS
PHASES = ["generation_seconds", "scoring_seconds", "reference_seconds", "update_seconds"]


class DislikesTheReward:
    """A judge against the toy reward: the fewer of TokenCountReward's liked tokens, the better. PPO
    on that reward drifts away from what this judge likes, so the in-loop win rate falls."""

    def __init__(self, tokenizer):
        self.reward = TokenCountReward(tokenizer)

    def score(self, prompt, topic, response):
        return -self.reward([prompt], [response]).item(), {}


def evaluator(tokenizer) -> WinRateVsStart:
    return WinRateVsStart(HELD_OUT, [None] * len(HELD_OUT), DislikesTheReward(tokenizer), seed=7)


def small(**changes) -> TrainPolicyParams:
    fields = dict(iterations=4, batch_size=8, minibatch_size=4, max_new_tokens=8, learning_rate=3e-3, kl_coef=0.0)
    return TrainPolicyParams(**{**fields, **changes})


def policy_weights(models) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in models.policy.named_parameters()}


def test_evaluating_in_the_loop_leaves_training_bitwise_the_same(tiny_tokenizer):
    def run(params, **hooks):
        models = tiny_models(tiny_tokenizer, params)
        result = train_on_toy(tiny_tokenizer, params, models=models, **hooks)
        return policy_weights(models), result.history

    plain, plain_history = run(small(eval_every=0, log_samples_every=0))
    evaluated, history = run(
        small(eval_every=1, log_samples_every=1), evaluator=evaluator(tiny_tokenizer), log_samples=lambda i, rows: 0
    )
    assert [row["iteration"] for row in history if "eval_win_rate" in row] == [1, 2, 3, 4]
    assert all(torch.equal(plain[name], evaluated[name]) for name in plain)
    assert [row["score"] for row in history] == [row["score"] for row in plain_history]
    assert all("eval_win_rate" not in row for row in plain_history)


def test_every_row_says_what_the_iteration_did(tiny_tokenizer):
    params = small(eval_every=2, log_samples_every=2, log_samples=3)
    tables = []
    result = train_on_toy(
        tiny_tokenizer,
        params,
        evaluator=evaluator(tiny_tokenizer),
        log_samples=lambda i, rows: tables.append((i, rows)),
    )
    for row in result.history:
        assert all(row[phase] > 0.0 for phase in PHASES), row  # each phase ran: none is skipped
        assert sum(row[phase] for phase in PHASES) <= row["iteration_seconds"] + 1e-5, row  # rounded to 1e-6 each
        assert row["tokens_per_second"] > 0 and row["generated_tokens"] > 0
        assert row["tokens_per_second"] == pytest.approx(row["generated_tokens"] / row["iteration_seconds"], rel=1e-3)
        assert row["peak_rss_mb"] > 10  # a Python process with torch holds far more than this
        assert row["policy_grad_norm"] > 0
        # the sampler's log-probs and the update's first forward agree: same tokens, same positions
        assert row["update_logprob_drift"] < 1e-4, row["update_logprob_drift"]
    evaluated = [row for row in result.history if "eval_win_rate" in row]
    assert [row["iteration"] for row in evaluated] == [2, 4]
    assert all(row["eval_seconds"] > 0 for row in evaluated)
    # a share of the held-out prompts: wins count 1, ties 1/2
    prompts = len(HELD_OUT)
    assert all((2 * row["eval_win_rate"] * prompts).is_integer() for row in evaluated), evaluated

    assert [iteration for iteration, _ in tables] == [2, 4]
    reward = TokenCountReward(tiny_tokenizer)
    for _, rows in tables:
        assert len(rows) == 3 and all(set(row) == {"prompt", "response", "reward", "kl"} for row in rows)
        assert all(row["prompt"] in PROMPTS for row in rows)
        # the reward column is the scorer's own score of that response
        assert [row["reward"] for row in rows] == [reward([r["prompt"]], [r["response"]]).item() for r in rows]
        assert all(isinstance(row["kl"], float) for row in rows)


def test_an_unchanged_policy_wins_exactly_half_against_the_start(tiny_tokenizer):
    params = small()
    models = tiny_models(tiny_tokenizer, params)
    wins = evaluator(tiny_tokenizer).wins(models, tiny_tokenizer, params)
    assert wins == [0.5] * len(HELD_OUT)  # the same seed draws the start's responses again: all ties


def test_keep_best_ends_with_the_best_iteration_s_policy_not_the_last(tiny_tokenizer):
    params = small(iterations=6, batch_size=16, minibatch_size=8, eval_every=1, keep="best")
    models = tiny_models(tiny_tokenizer, params)
    after = {}  # each iteration's policy, as the log sees it right after the update

    def log(row):
        after[row["iteration"]] = policy_weights(models)

    result = train_on_toy(tiny_tokenizer, params, models=models, log=log, evaluator=evaluator(tiny_tokenizer))
    rates = [row["eval_win_rate"] for row in result.history]
    best = rates.index(max(rates)) + 1  # ties: the earlier iteration
    assert result.kept_iteration == best != params.iterations, rates
    assert result.kept_win_rate == max(rates) > rates[-1]
    kept = policy_weights(models)
    assert all(torch.equal(kept[name], after[best][name]) for name in kept)
    assert not all(torch.equal(kept[name], after[params.iterations][name]) for name in kept)


def test_keep_last_names_the_last_iteration(tiny_tokenizer):
    params = small(iterations=3, eval_every=2)
    result = train_on_toy(tiny_tokenizer, params, evaluator=evaluator(tiny_tokenizer))
    assert result.kept_iteration == 3 and result.kept_win_rate == result.history[-1]["eval_win_rate"]


def test_a_tie_keeps_the_earlier_iteration(tiny_tokenizer):
    params = small()
    models = tiny_models(tiny_tokenizer, params)
    state = TrainerState(None, None, None, None)
    remember_if_best(state, models, 2, 0.6)
    remember_if_best(state, models, 3, 0.6)
    remember_if_best(state, models, 4, 0.5)
    assert (state.best["iteration"], state.best["win_rate"]) == (2, 0.6)
    remember_if_best(state, models, 5, 0.7)
    assert state.best["iteration"] == 5


class Killed(Exception):
    pass


def test_the_best_so_far_survives_a_resume(tiny_tokenizer, tmp_path):
    params = small(iterations=6, batch_size=16, minibatch_size=8, eval_every=1, keep="best", checkpoint_every=2)

    def run(directory, log=lambda r: 0):
        models = tiny_models(tiny_tokenizer, params)
        result = train_on_toy(
            tiny_tokenizer,
            params,
            models=models,
            log=log,
            checkpoint_dir=directory,
            evaluator=evaluator(tiny_tokenizer),
        )
        return policy_weights(models), result

    uninterrupted, expected = run(tmp_path / "a")

    def killed_at_five(row):
        if row.get("iteration") == 5:  # before iteration 5's checkpoint: the resume starts from 4
            raise Killed

    with pytest.raises(Killed):
        run(tmp_path / "b", killed_at_five)
    resumed, result = run(tmp_path / "b")
    assert result.resumed_from == 4
    assert expected.kept_iteration < 4, "the best must come before the checkpoint for this test to mean anything"
    assert (result.kept_iteration, result.kept_win_rate) == (expected.kept_iteration, expected.kept_win_rate)
    assert all(torch.equal(uninterrupted[name], resumed[name]) for name in uninterrupted)

"""PPO as a whole on tiny models: it learns, it resumes exactly, it stops safely, and its options work."""

import json
import re
import signal
import subprocess
import time

import pandas as pd
import pytest
import torch
from transformers import GPT2ForSequenceClassification, GPT2LMHeadModel

from rlhf import chat
from rlhf.config import TrainPolicyParams
from rlhf.demo import domain
from rlhf.errors import TrainingStopped
from rlhf.logprobs import response_logits, token_logprobs
from rlhf.policy_optimization.models import PolicyModels
from rlhf.pretrained import load_policy
from tests.support.policy_runs import (
    PROMPTS,
    SMALL_RUN,
    STAGE_ENV,
    TokenCountReward,
    kill_after_third_checkpoint,
    measured,
    run_stage,
    tiny_models,
    toy_params,
    train_on_toy,
)
from tests.support.tiny import tiny_gpt2_config


def assert_sampler_follows_the_weights(models: PolicyModels, tokenizer, prompts: list[str]) -> None:
    """The compiled sampler's log-probs equal a full forward pass of the policy as trained."""
    query = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left")
    args = (query["input_ids"], query["attention_mask"])
    models.policy.eval()  # as the rollout samples: the step compiled for eval mode is the one reused
    ids, mask, _, logprobs = models.compiled_sampler(*args, 12, 1.0, tokenizer.eos_token_id, tokenizer.pad_token_id)
    with torch.no_grad():
        expected = token_logprobs(response_logits(models.policy, *args, ids, mask, 1.0), ids) * mask
    assert torch.allclose(logprobs, expected, atol=1e-4)


@pytest.mark.parametrize("compile_generation", [False, True])
def test_ppo_raises_a_toy_reward_within_a_fixed_budget(tiny_tokenizer, compile_generation):
    params = toy_params(iterations=14, compile_generation=compile_generation)
    models = tiny_models(tiny_tokenizer, params)
    history = train_on_toy(tiny_tokenizer, params, models=models)
    assert (models.compiled_sampler is not None) == compile_generation
    if compile_generation:  # the compiled step reads the weights as they are now, not as they were compiled
        assert_sampler_follows_the_weights(models, tiny_tokenizer, PROMPTS[: params.batch_size])
    scores = [row["score"] for row in history.history]
    first, last = sum(scores[:3]) / 3, sum(scores[-3:]) / 3
    assert last > first + 1.0, scores  # about 1 liked token of 12 at the start
    assert history.history[-1]["kl"] > 0.0  # it got there by moving away from the reference


class ZeroReward:
    def __call__(self, prompts, responses):
        return torch.zeros(len(responses))


def test_entropy_bonus_keeps_the_policy_spread(tiny_tokenizer):
    """From the same sharp start (the final layer norm scaled up, so the logits are peaked) and a
    reward that is always 0, PPO with no bonus stays sharp while an entropy bonus (entropy_coef)
    spreads the policy out, and the update logs its term as -c2 * entropy."""
    runs = {}
    for coef in (0.0, 0.05):
        params = toy_params(iterations=6, entropy_coef=coef)
        models = tiny_models(tiny_tokenizer, params)
        with torch.no_grad():
            models.policy.transformer.ln_f.weight.mul_(20.0)
        runs[coef] = train_on_toy(tiny_tokenizer, params, models=models, reward=ZeroReward()).history
    plain, bonus = runs[0.0], runs[0.05]
    assert "entropy_bonus" not in plain[-1]
    assert bonus[-1]["entropy_bonus"] == pytest.approx(-0.05 * bonus[-1]["entropy"], rel=1e-4)

    def late(history):
        return sum(row["entropy"] for row in history[-3:]) / 3

    assert late(bonus) > late(plain) + 1.0, (late(bonus), late(plain))  # measured: 3.9 against 0.2


class LetterReward:
    """Toy reward read off the text itself (no re-tokenising): how many of the response's characters
    are common English letters. Every vocabulary entry decodes to fixed characters, so the policy
    controls this directly."""

    liked = set("etaoinshr")

    def __call__(self, prompts, responses):
        return torch.tensor([float(sum(ch in self.liked for ch in text)) for text in responses])


class LetterCost:
    """Toy cost model: a logit of +6 (P(unsafe) ~ 1) when the response holds the letter `unsafe` at
    least `times` times, else -6. The letter is one the reward likes: the constraint has a price,
    and a policy can meet it and still collect reward with the other liked letters."""

    def __init__(self, unsafe: str, times: int):
        self.unsafe, self.times = unsafe, times

    def __call__(self, prompts, responses):
        return torch.tensor([6.0 if text.count(self.unsafe) >= self.times else -6.0 for text in responses])


def test_ppo_lagrangian_lowers_the_unsafe_share_while_the_reward_holds(tiny_tokenizer):
    from rlhf.policy_optimization.rollout import sample_responses

    def run(safety: dict) -> list[dict]:
        params = TrainPolicyParams(
            algorithm="ppo_lagrangian",
            iterations=14,
            batch_size=32,
            minibatch_size=16,
            ppo_epochs=4,
            learning_rate=3e-3,
            value_learning_rate=3e-3,
            kl_coef=0.0,
            max_new_tokens=12,
            missing_eos_penalty=0.0,
            score_normalization="none",
            safety=safety,
        )
        # "e" at its median count per starting response or more is unsafe: about half start unsafe.
        start = sample_responses(tiny_models(tiny_tokenizer, params), tiny_tokenizer, PROMPTS[:32], params)
        median = sorted(text.count("e") for text in start.texts)[len(start.texts) // 2]
        return train_on_toy(
            tiny_tokenizer, params, reward=LetterReward(), cost_scorer=LetterCost("e", max(median, 1))
        ).history

    def mean(key, part):
        return sum(row[key] for row in part) / len(part)

    constrained = run({"cost_limit": 0.1, "lagrange_init": 1.0, "lagrange_lr": 5.0})
    unconstrained = run({"lagrange_init": 0.0, "lagrange_lr": 1e-9})  # lambda stays 0: plain PPO
    first, last = constrained[:3], constrained[-3:]
    assert mean("cost", first) > 0.3, [row["cost"] for row in constrained]
    assert mean("cost", last) < mean("cost", first) - 0.2, [row["cost"] for row in constrained]
    assert mean("raw_score", last) >= 0.8 * mean("raw_score", first), [row["raw_score"] for row in constrained]
    assert max(row["lagrange_multiplier"] for row in constrained) > 1.0  # lambda rose while over the limit
    # Without the constraint the same run buys reward with unsafe responses.
    assert mean("cost", unconstrained[-3:]) > mean("cost", last) + 0.2, [row["cost"] for row in unconstrained]
    assert mean("raw_score", unconstrained[-3:]) > mean("raw_score", last)


def test_lagrange_multiplier_follows_the_constraint():
    from rlhf.policy_optimization.core import LagrangeMultiplier

    lagrange = LagrangeMultiplier(1.0, limit=0.1, lr=5.0, maximum=3.0)
    lagrange.update(0.3)  # over the limit by 0.2: +1.0
    assert lagrange.value == pytest.approx(2.0)
    lagrange.update(0.5)  # +2.0, held at the maximum
    assert lagrange.value == pytest.approx(3.0)
    lagrange.update(0.0)  # under the limit by 0.1: -0.5
    assert lagrange.value == pytest.approx(2.5)
    for _ in range(10):
        lagrange.update(0.0)
    assert lagrange.value == 0.0  # never negative
    lagrange.value = 1.0
    penalised = lagrange.penalised(torch.tensor([2.0, 2.0]), torch.tensor([0.0, 1.0]))
    assert penalised.tolist() == pytest.approx([1.0, 0.5])  # (2 - 1 * cost) / (1 + 1)


@pytest.mark.parametrize("compile_generation", [False, True])
def test_lora_reference_is_the_base_with_adapters_off_and_base_weights_stay(tiny_tokenizer, compile_generation):
    params = TrainPolicyParams(
        iterations=3,
        batch_size=8,
        minibatch_size=4,
        max_new_tokens=8,
        learning_rate=1e-2,
        lora_rank=4,
        lora_target_modules=["c_attn", "c_fc"],
        compile_generation=compile_generation,
    )
    models = tiny_models(tiny_tokenizer, params)
    assert models.reference is None  # no second copy of the policy
    base = {n: p.detach().clone() for n, p in models.policy.named_parameters() if "lora_" not in n}
    result = train_on_toy(tiny_tokenizer, params, models=models)
    assert result.history[0]["kl"] == pytest.approx(0.0, abs=1e-5)  # adapters start as a no-op
    assert result.history[-1]["kl"] != pytest.approx(0.0, abs=1e-6)
    assert all(torch.equal(base[n], p) for n, p in models.policy.named_parameters() if n in base)
    if compile_generation:  # the adapters it samples with are the trained ones
        assert_sampler_follows_the_weights(models, tiny_tokenizer, PROMPTS[: params.batch_size])
    merged = models.trained_policy()
    assert not any("lora_" in name for name, _ in merged.named_parameters())


def test_gradient_checkpointing_saves_fewer_activations_and_trains_the_same(tiny_tokenizer):
    def run(checkpointing: bool):
        params = TrainPolicyParams(
            iterations=2, batch_size=8, minibatch_size=4, max_new_tokens=8, gradient_checkpointing=checkpointing
        )
        models = tiny_models(tiny_tokenizer, params)
        models.trained.train()
        saved = []
        query = tiny_tokenizer(PROMPTS[:4], return_tensors="pt", padding=True, padding_side="left")
        response = torch.randint(0, len(tiny_tokenizer), (4, 6))
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
            models.trained(query["input_ids"], query["attention_mask"], response, torch.ones(4, 6), 1.0)
        train_on_toy(tiny_tokenizer, params, models=models)
        return [p.detach().clone() for p in models.policy.parameters()], sum(saved)

    (plain, plain_saved), (checkpointed, checkpointed_saved) = run(False), run(True)
    assert checkpointed_saved < plain_saved / 2  # activations kept for the backward pass
    for a, b in zip(plain, checkpointed):
        assert torch.allclose(a, b, atol=1e-6)


def test_nan_reward_stops_and_keeps_the_last_good_checkpoint(tiny_tokenizer, tmp_path):
    params = TrainPolicyParams(iterations=5, batch_size=8, minibatch_size=4, max_new_tokens=8, checkpoint_every=1)
    calls = []

    def reward_turning_nan(prompts, responses):
        calls.append(1)
        scores = torch.ones(len(responses))
        return scores * float("nan") if len(calls) == 4 else scores  # calibration, iterations 1, 2, then NaN

    with pytest.raises(TrainingStopped) as stopped:
        train_on_toy(tiny_tokenizer, params, reward=reward_turning_nan, checkpoint_dir=tmp_path / "ckpt")
    message = str(stopped.value)
    assert message.startswith("iteration 3: score is nan") and message.endswith("iteration-000002")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["fingerprint.json", "iteration-000002"]


def test_kl_ceiling_stops_the_run(tiny_tokenizer):
    params = TrainPolicyParams(
        iterations=6, batch_size=8, minibatch_size=4, max_new_tokens=8, learning_rate=5e-2, kl_coef=0.0, max_kl=1e-4
    )
    with pytest.raises(TrainingStopped, match=r"is above train_policy.max_kl = 0.0001"):
        train_on_toy(tiny_tokenizer, params)


def test_reward_hacking_monitor_ends_the_run_early(tiny_tokenizer):
    params = TrainPolicyParams(
        iterations=5, batch_size=8, minibatch_size=4, max_new_tokens=8, early_stop_response_length=2.0
    )
    result = train_on_toy(tiny_tokenizer, params)
    assert len(result.history) == 1
    assert result.stopped_early.startswith("response_length") and "early_stop_response_length = 2.0" in (
        result.stopped_early
    )


@pytest.mark.gpu
@pytest.mark.parametrize("compile_generation", [False, True])
def test_ppo_on_cuda_with_bf16_autocast_learns_the_toy_reward(tiny_tokenizer, compile_generation):
    params = toy_params(iterations=14, mixed_precision="auto", compile_generation=compile_generation)
    models = tiny_models(tiny_tokenizer, params, device="cuda")
    result = train_on_toy(tiny_tokenizer, params, models=models)
    scores = [row["score"] for row in result.history]
    assert all(torch.isfinite(torch.tensor(scores)))
    assert sum(scores[-3:]) / 3 > sum(scores[:3]) / 3 + 1.0, scores


# --- the stage as a process: kill and resume, one-line stops, many processes ---


def test_stage_killed_with_sigkill_resumes_and_ends_where_an_uninterrupted_run_ends(stage_workspace, project_root):
    """With keep: best, whose best-so-far must survive the kill, and the samples tables."""
    root, command = stage_workspace
    run = {**SMALL_RUN, "keep": "best", "eval_every": 2, "log_samples_every": 2, "log_samples": 3}
    done = run_stage(command(**run), project_root)
    assert done.returncode == 0, done.stderr
    uninterrupted = load_policy(root / "policy", torch.device("cpu")).state_dict()
    uninterrupted_curve = pd.read_csv(root / "policy.csv")
    uninterrupted_metrics = json.loads((root / "policy.json").read_text())
    uninterrupted_samples = (root / "dvclive" / "samples.jsonl").read_text()
    uninterrupted_live = (root / "dvclive" / "plots" / "metrics" / "score.tsv").read_text()
    assert not (root / "ckpt").exists()  # removed once the policy is written
    assert (root / "policy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rates = uninterrupted_curve.dropna(subset=["eval_win_rate"])
    assert list(rates["iteration"]) == [2, 4, 6]
    assert uninterrupted_metrics["kept_win_rate"] == rates["eval_win_rate"].max()
    assert uninterrupted_metrics["kept_iteration"] == rates["iteration"][rates["eval_win_rate"].idxmax()]
    samples = [json.loads(line) for line in uninterrupted_samples.splitlines()]
    assert [row["step"] for row in samples] == [2, 2, 2, 4, 4, 4, 6, 6, 6]
    assert all(set(row) == {"step", "prompt", "response", "reward", "kl"} for row in samples)
    for path in ("policy", "policy.csv", "policy.png", "policy.json"):
        subprocess.run(["rm", "-rf", str(root / path)], check=True)

    kill_after_third_checkpoint(command(**run), root, project_root)
    assert not (root / "policy").exists()

    resumed = run_stage(command(**run), project_root)
    assert resumed.returncode == 0, resumed.stderr
    assert re.search(r"resumed after iteration [34] from", resumed.stdout)  # the kill lands within a step
    final = load_policy(root / "policy", torch.device("cpu")).state_dict()
    assert all(torch.equal(uninterrupted[name], final[name]) for name in uninterrupted)
    curve = pd.read_csv(root / "policy.csv")
    pd.testing.assert_frame_equal(
        curve.drop(columns=measured(curve)), uninterrupted_curve.drop(columns=measured(curve))
    )
    metrics = json.loads((root / "policy.json").read_text())
    assert (metrics["kept_iteration"], metrics["kept_win_rate"]) == (
        uninterrupted_metrics["kept_iteration"],
        uninterrupted_metrics["kept_win_rate"],
    )
    assert (
        root / "dvclive" / "samples.jsonl"
    ).read_text() == uninterrupted_samples  # the resumed run's repeats dropped
    # DVCLive's series: the rows before the checkpoint logged again, so it is the uninterrupted run's
    steps_and_scores = [line.split("\t")[1:] for line in uninterrupted_live.splitlines()]  # past the timestamp
    resumed_live = (root / "dvclive" / "plots" / "metrics" / "score.tsv").read_text()
    assert [line.split("\t")[1:] for line in resumed_live.splitlines()] == steps_and_scores


def test_stage_does_not_resume_a_checkpoint_of_other_params(stage_workspace, project_root):
    root, command = stage_workspace
    process = subprocess.Popen(
        command(**SMALL_RUN), cwd=project_root, env=STAGE_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    while not (root / "ckpt" / "iteration-000002").exists():
        assert process.poll() is None
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = run_stage(command(**{**SMALL_RUN, "learning_rate": 1e-3}), project_root)
    assert done.returncode == 0, done.stderr
    assert "resumed" not in done.stdout
    assert len(pd.read_csv(root / "policy.csv")) == SMALL_RUN["iterations"]


def test_stage_stops_with_one_line_naming_the_ceiling(stage_workspace, project_root):
    root, command = stage_workspace
    done = run_stage(command(**{**SMALL_RUN, "learning_rate": 0.05, "kl_coef": 0.0, "max_kl": 1e-4}), project_root)
    assert done.returncode == 3
    last_line = done.stderr.strip().splitlines()[-1]
    assert last_line.startswith("train_policy: stopped: iteration ") and "train_policy.max_kl" in last_line
    assert "Traceback" not in done.stderr
    assert not (root / "policy").exists()


def test_stage_runs_as_two_ddp_processes_under_accelerate_launch(stage_workspace, project_root):
    root, command = stage_workspace
    done = run_stage(command(**{**SMALL_RUN, "iterations": 2, "launcher": "ddp", "num_processes": 2}), project_root)
    # on failure, every rank's own lines (torchrun's summary at the end does not carry the cause)
    assert done.returncode == 0, "\n".join(line for line in done.stderr.splitlines() if line.startswith("[rank"))[
        -6000:
    ]
    assert "2 process(es)" in done.stdout
    metrics = json.loads((root / "policy.json").read_text())
    assert metrics["iterations"] == 2
    # the in-loop evaluation at the last iteration, each process on its share of the held-out prompts
    assert metrics["kept_iteration"] == 2
    curve = pd.read_csv(root / "policy.csv")
    assert metrics["kept_win_rate"] == pytest.approx(curve.set_index("iteration").loc[2, "eval_win_rate"])
    assert load_policy(root / "policy", torch.device("cpu")).num_parameters() > 0


def test_linear_schedule_with_warmup_and_adaptive_kl_move_per_iteration(tiny_tokenizer):
    params = TrainPolicyParams(
        iterations=4,
        batch_size=8,
        minibatch_size=4,
        max_new_tokens=8,
        learning_rate=1e-3,
        lr_schedule="linear",
        warmup_iterations=1,
        kl_controller="adaptive",
        target_kl=1e-6,
        kl_horizon=8,
        kl_coef=0.1,
        kl_estimator="k3",
    )
    result = train_on_toy(tiny_tokenizer, params)
    rates = [row["learning_rate"] for row in result.history]
    assert rates == pytest.approx([0.0, 1e-3, 1e-3 * 2 / 3, 1e-3 / 3], abs=1e-6)  # warm up, then decay to zero
    coefs, kls = [row["kl_coef"] for row in result.history], [row["kl"] for row in result.history]
    # Iterations 1-2 sample an unchanged policy (no step during warmup): KL ~ 0 < target, beta shrinks;
    # once the policy moves, KL passes the target and beta grows.
    assert kls[0] < 1e-6 and coefs[1] == pytest.approx(0.1 * (1 - 0.2))
    assert kls[2] > 1e-6 and coefs[3] == pytest.approx(coefs[2] * (1 + 0.2))


@pytest.mark.parametrize("normalization", ["initial", "running"])
@pytest.mark.parametrize("critic_is_reward_model", [True, False])
def test_a_critic_copied_from_the_reward_model_starts_on_the_normalised_scale(
    tiny_tokenizer, critic_is_reward_model, normalization
):
    """With score_normalization initial or running the returns are built from (score - mean) / std;
    a critic copied from the reward model reads raw scores until its head is rescaled the same way
    (under running, by the calibration batch that seeds the running statistics)."""
    params = TrainPolicyParams(batch_size=8, minibatch_size=4, max_new_tokens=8, score_normalization=normalization)
    params = params.model_copy(update={"iterations": 0})  # calibration only: the head as PPO's first step sees it
    torch.manual_seed(0)
    policy = GPT2LMHeadModel(tiny_gpt2_config(tiny_tokenizer))
    reference = GPT2LMHeadModel(tiny_gpt2_config(tiny_tokenizer))
    reference.load_state_dict(policy.state_dict())
    critic = GPT2ForSequenceClassification(tiny_gpt2_config(tiny_tokenizer, num_labels=1))
    models = PolicyModels.build(policy, critic, params, reference, critic_is_reward_model=critic_is_reward_model)
    hidden = torch.randn(5, critic.config.n_embd)
    with torch.no_grad():
        before = models.trained.critic.score(hidden)[:, 0].clone()
    reward = TokenCountReward(tiny_tokenizer)  # raw scores of a few tokens each: far from mean 0, std 1
    train_on_toy(tiny_tokenizer, params, models=models, reward=reward, log=lambda row: None)
    with torch.no_grad():
        after = models.trained.critic.score(hidden)[:, 0]
    if not critic_is_reward_model:  # a new value head on the policy: left as it starts
        assert torch.equal(before, after)
        return
    # after = (before - mean) / std for the calibration batch's mean and std: an affine map, std > 0
    slope = (after[1:] - after[0]) / (before[1:] - before[0])
    assert torch.allclose(slope, slope[0].expand_as(slope), rtol=1e-4) and slope[0] > 0
    assert not torch.allclose(after, before)


def test_the_gold_score_is_logged_beside_the_proxy_and_a_plateau_ends_the_run(tiny_tokenizer):
    from rlhf.config import load_params
    from rlhf.judges.constitution import RuleJudge
    from rlhf.policy_optimization.monitors import gold_plateau
    from rlhf.rewards.rules import RulesReward

    params = TrainPolicyParams(iterations=3, batch_size=8, minibatch_size=4, max_new_tokens=8)
    judge = RuleJudge(load_params().rank_responses.principles)
    topics = {chat.to_json(chat.as_conversation(p)): t for p, t in domain.all_prompts()[:40]}
    gold = RulesReward(judge.principles, topics)
    prompt, topic = domain.all_prompts()[0]
    assert (
        gold([prompt], [f"thanks , {topic} are nice"]).item()
        == judge.score(prompt, topic, f"thanks , {topic} are nice")[0]
    )
    result = train_on_toy(tiny_tokenizer, params, log=lambda row: None, gold_scorer=gold)
    assert all({"gold_score", "sqrt_kl", "raw_score"} <= set(row) for row in result.history)
    # (the history is rounded to 6 digits: sqrt of a 1e-6 rounding is 1e-3)
    assert all(row["sqrt_kl"] == pytest.approx(max(row["kl"], 0.0) ** 0.5, abs=1.1e-3) for row in result.history)
    flat = [{"gold_score": g} for g in (1.0, 2.0, 1.5, 1.9, 1.8)]  # best at the second; three since
    assert gold_plateau(flat, params.model_copy(update={"early_stop_gold_patience": 3})) is not None
    assert gold_plateau(flat, params.model_copy(update={"early_stop_gold_patience": 4})) is None
    assert gold_plateau(flat, params) is None  # no patience set: never

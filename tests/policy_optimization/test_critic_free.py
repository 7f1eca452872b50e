"""The critic-free algorithms (GRPO, Dr. GRPO, RLOO, REINFORCE++) in our own trainer on tiny models:
each learns a toy reward, none holds a critic, the online reward sources drive them, the stage
resumes GRPO exactly after SIGKILL, and the params refuse what is not built."""

import copy
import json
import re
import subprocess
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import GPT2ForSequenceClassification, GPT2LMHeadModel

from rlhf import chat
from rlhf.config import RewardTerm, TrainPolicyParams, WordCount, parse_params
from rlhf.errors import ConfigError
from rlhf.policy_optimization.models import PolicyModels
from rlhf.pretrained import load_policy
from rlhf.rewards.server import create_app
from rlhf.rewards.terms import online_reward
from tests.support.policy_runs import (
    BUDGET,
    PROMPTS,
    SMALL_RUN,
    TOPICS,
    TokenCountReward,
    critic_free_models,
    gain,
    kill_after_third_checkpoint,
    measured,
    run_stage,
    train,
    train_on_toy,
)
from tests.support.servers import serving
from tests.support.tiny import tiny_gpt2_config

# The tiny model gains nothing from a second thread (the fixture says why).
pytestmark = pytest.mark.usefixtures("one_thread")


VARIANTS = {
    "grpo": {"algorithm": "grpo"},
    "rloo": {"algorithm": "rloo"},
    "reinforce_pp": {"algorithm": "reinforce_pp"},
    "gspo": {"algorithm": "gspo"},  # one object and one schema line (issue 29)
    # Dr. GRPO's two changes, with DAPO's clip-higher and dynamic sampling on top
    "dr_grpo_dapo": {
        "algorithm": "grpo",
        "grpo_std_normalization": False,
        "loss_aggregation": "constant_length",
        "clip_range_high": 0.28,
        "dynamic_sampling": True,
    },
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_each_critic_free_algorithm_raises_the_toy_reward_within_a_fixed_budget(tiny_tokenizer, variant):
    history = train(tiny_tokenizer, TokenCountReward(tiny_tokenizer), **VARIANTS[variant])
    assert gain(history) > 2.0, [row["score"] for row in history]  # about 6 liked tokens at the start
    assert history[-1]["kl"] > 0.0
    assert not any("value_loss" in row or "critic_grad_norm" in row for row in history)  # no critic trained
    assert ("kl_loss" in history[0]) == (VARIANTS[variant]["algorithm"] in ("grpo", "gspo"))  # the k3 term, logged
    if VARIANTS[variant].get("dynamic_sampling"):
        groups = BUDGET["batch_size"] // TrainPolicyParams(**BUDGET, **VARIANTS[variant]).group_size
        assert all((row["dropped_share"] * groups).is_integer() for row in history)  # whole groups are dropped


@pytest.mark.parametrize("algorithm", ["grpo", "rloo", "reinforce_pp"])
def test_the_kl_to_the_reference_holds_each_algorithm_near_it(tiny_tokenizer, algorithm):
    """kl_coef reaches the update where each paper puts the KL (GRPO: the k3 loss; RLOO: the sequence
    reward; REINFORCE++: the token rewards): a large beta ends nearer the reference than beta = 0."""
    free = train(tiny_tokenizer, TokenCountReward(tiny_tokenizer), algorithm=algorithm, iterations=8)
    held = train(tiny_tokenizer, TokenCountReward(tiny_tokenizer), algorithm=algorithm, iterations=8, kl_coef=3.0)
    assert held[-1]["kl"] < 0.6 * free[-1]["kl"], (held[-1]["kl"], free[-1]["kl"])  # seen: 0.06-0.4 of it


def test_dynamic_sampling_drops_groups_of_equal_rewards_from_the_update(tiny_tokenizer):
    """A reward that is the same for every response: every group is dropped, so the policy never moves."""
    params = TrainPolicyParams(**{**BUDGET, **VARIANTS["dr_grpo_dapo"], "iterations": 2})
    models = critic_free_models(tiny_tokenizer, params)
    start = {name: p.detach().clone() for name, p in models.policy.named_parameters()}
    history = train_on_toy(
        tiny_tokenizer, params, models=models, reward=lambda prompts, responses: torch.ones(len(responses))
    ).history
    assert [row["dropped_share"] for row in history] == [1.0, 1.0]
    assert all(torch.equal(start[name], p) for name, p in models.policy.named_parameters())


def test_no_critic_is_built_trained_or_checkpointed(tiny_tokenizer, tmp_path):
    params = TrainPolicyParams(**{**BUDGET, "algorithm": "grpo", "iterations": 2, "checkpoint_every": 1})
    models = critic_free_models(tiny_tokenizer, params)
    assert models.trained.critic is None
    assert all(name.startswith("policy.") for name, _ in models.trained.named_parameters())
    train_on_toy(tiny_tokenizer, params, models=models, checkpoint_dir=tmp_path / "ckpt")
    saved = tmp_path / "ckpt" / "iteration-000002"
    weights = load_file(saved / "model.safetensors")
    assert weights and all(name.startswith("policy.") for name in weights)  # no critic.* tensor
    optimizer = torch.load(saved / "optimizer.bin", weights_only=False)
    assert len(optimizer["param_groups"]) == 1  # the policy's; no critic group
    # and a critic handed to a critic-free algorithm (or none to PPO) is refused
    critic = GPT2ForSequenceClassification(tiny_gpt2_config(tiny_tokenizer, num_labels=1))
    reference = GPT2LMHeadModel(tiny_gpt2_config(tiny_tokenizer))
    with pytest.raises(ValueError, match="grpo is critic-free"):
        PolicyModels.build(GPT2LMHeadModel(tiny_gpt2_config(tiny_tokenizer)), critic, params, reference=reference)
    with pytest.raises(ValueError, match="ppo needs a critic"):
        PolicyModels.build(
            GPT2LMHeadModel(tiny_gpt2_config(tiny_tokenizer)), None, TrainPolicyParams(), reference=reference
        )


def test_rollout_repeats_each_prompt_group_size_times_prompt_major(tiny_tokenizer):
    seen = []

    def recording_reward(prompts, responses):
        seen.append([chat.to_json(chat.as_conversation(p)) for p in prompts])
        return torch.zeros(len(responses))

    train(tiny_tokenizer, recording_reward, algorithm="rloo", iterations=2, group_size=4)
    for batch in seen:  # (iteration 1, iteration 2): 8 prompts, each 4 times in a row
        assert len(batch) == 32
        groups = [batch[i : i + 4] for i in range(0, 32, 4)]
        assert all(len(set(group)) == 1 for group in groups)
        assert len({group[0] for group in groups}) > 1


# --- online reward sources driving the critic-free algorithms --------------------------------------


def test_the_rules_reward_drives_grpo(tiny_tokenizer):
    """train_policy.reward: [{source: rules}] scores with rank_responses.principles: here one the
    tiny random policy can learn within the budget (its shipped principles need real language)."""
    short = [WordCount(kind="word_count", name="short", min=1, max=3, weight=1.0)]
    topics = {chat.to_json(chat.as_conversation(p)): t for p, t in zip(PROMPTS, TOPICS)}
    reward = online_reward([RewardTerm(source="rules")], lambda: pytest.fail("no reward model wanted"), short, topics)
    history = train(tiny_tokenizer, reward, algorithm="grpo")
    assert gain(history) > 0.2, [row["score"] for row in history]  # the share of 1-3 word responses: ~0.4 at start


class LikedTokenModel(torch.nn.Module):
    """A toy reward model for the server: the number of the exchange's tokens in TokenCountReward's
    set, as a sequence classifier's logit (what rlhf.scoring reads)."""

    def __init__(self, tokenizer):
        super().__init__()
        self.liked = torch.zeros(len(tokenizer), dtype=torch.bool)
        self.liked[sorted(TokenCountReward(tokenizer).liked)] = True
        self.unused = torch.nn.Parameter(torch.zeros(1))  # scoring reads its device
        self.config = SimpleNamespace()

    def forward(self, input_ids, attention_mask):
        return SimpleNamespace(logits=(self.liked[input_ids] * attention_mask).sum(-1, keepdim=True).float())


def test_our_http_reward_server_drives_rloo(tiny_tokenizer):
    """train_policy.reward: [{source: remote, url}] against rlhf.rewards.server on 127.0.0.1."""
    calls = []
    model = LikedTokenModel(tiny_tokenizer)
    counting = model.forward
    model.forward = lambda *a, **k: calls.append(1) or counting(*a, **k)
    with serving(create_app(model, tiny_tokenizer)) as address:
        term = RewardTerm(source="remote", url=f"{address}/get_reward", batch_size=16, max_retries=1)
        reward = online_reward([term], lambda: pytest.fail("no reward model wanted"), [], {}, tiny_tokenizer)
        history = train(tiny_tokenizer, reward, algorithm="rloo")
    assert len(calls) >= 2 * len(history)  # two requests of 16 per rollout of 32 reached the server
    assert gain(history) > 2.0, [row["score"] for row in history]


def test_a_weighted_sum_of_sources_is_what_the_trainer_sees(tiny_tokenizer):
    terms = [RewardTerm(source="rules", weight=2.0), RewardTerm(source="reward_model", weight=-0.5)]
    short = [WordCount(kind="word_count", name="short", min=1, max=3, weight=1.0)]
    reward = online_reward(terms, lambda: TokenCountReward(tiny_tokenizer), short, {})
    responses = ["a b", "a b c d e"]
    expected = 2.0 * torch.tensor([1.0, 0.0]) - 0.5 * TokenCountReward(tiny_tokenizer)(PROMPTS[:2], responses)
    assert torch.equal(reward(PROMPTS[:2], responses), expected)
    assert set(reward.last_means) == {"rules", "reward_model"}
    # the trainer logs each part's mean beside the sum it optimises
    history = train(tiny_tokenizer, reward, algorithm="grpo", iterations=2)
    for row in history:
        assert row["raw_score"] == pytest.approx(2.0 * row["reward_rules"] - 0.5 * row["reward_reward_model"], abs=1e-5)
        # one principle of weight 1: each response scores 0 or 1, so the batch mean is a count / batch
        assert (row["reward_rules"] * BUDGET["batch_size"]).is_integer(), row["reward_rules"]


def test_grpo_stage_runs_as_two_ddp_processes(stage_workspace, project_root):
    """Under DDP each process samples whole groups of its share of the prompts; the group advantages
    never cross processes, and no critic exists on any rank."""
    root, command = stage_workspace
    settings = {
        **SMALL_RUN,
        "algorithm": "grpo",
        "group_size": 4,
        "iterations": 2,
        "launcher": "ddp",
        "num_processes": 2,
    }
    done = run_stage(command(**settings), project_root)
    assert done.returncode == 0, "\n".join(line for line in done.stderr.splitlines() if line.startswith("[rank"))[
        -6000:
    ]
    assert "2 process(es)" in done.stdout
    metrics = json.loads((root / "policy.json").read_text())
    assert metrics["algorithm"] == "grpo" and metrics["iterations"] == 2
    assert not list(root.glob("policy/*critic*")) and not (root / "ckpt").exists()
    assert load_policy(root / "policy", torch.device("cpu")).num_parameters() > 0


# --- the stage: killed and resumed, GRPO ends bitwise where an uninterrupted run ends --------------


def test_grpo_stage_killed_with_sigkill_resumes_and_ends_where_an_uninterrupted_run_ends(stage_workspace, project_root):
    root, command = stage_workspace
    run = {**SMALL_RUN, "algorithm": "grpo", "group_size": 4, "keep": "best", "eval_every": 2}
    done = run_stage(command(**run), project_root)
    assert done.returncode == 0, done.stderr
    uninterrupted = load_policy(root / "policy", torch.device("cpu")).state_dict()
    uninterrupted_curve = pd.read_csv(root / "policy.csv")
    uninterrupted_metrics = json.loads((root / "policy.json").read_text())
    assert uninterrupted_metrics["algorithm"] == "grpo" and "value_loss" not in uninterrupted_curve
    for path in ("policy", "policy.csv", "policy.png", "policy.json"):
        subprocess.run(["rm", "-rf", str(root / path)], check=True)

    kill_after_third_checkpoint(command(**run), root, project_root)
    assert not (root / "policy").exists()
    checkpoint = next(p for p in (root / "ckpt").iterdir() if re.match(r"iteration-\d+$", p.name))
    assert all(name.startswith("policy.") for name in load_file(checkpoint / "model.safetensors"))  # no critic

    resumed = run_stage(command(**run), project_root)
    assert resumed.returncode == 0, resumed.stderr
    assert re.search(r"resumed after iteration [34] from", resumed.stdout)
    final = load_policy(root / "policy", torch.device("cpu")).state_dict()
    assert all(torch.equal(uninterrupted[name], final[name]) for name in uninterrupted)
    curve = pd.read_csv(root / "policy.csv")
    pd.testing.assert_frame_equal(
        curve.drop(columns=measured(curve)), uninterrupted_curve.drop(columns=measured(curve))
    )
    metrics = json.loads((root / "policy.json").read_text())
    assert metrics["kept_iteration"] == uninterrupted_metrics["kept_iteration"]


# --- params: what is not built is refused in one line naming the key -------------------------------


@pytest.fixture()
def raw(project_root):
    return yaml.safe_load((project_root / "params.yaml").read_text())


@pytest.mark.parametrize(
    "settings, expected",
    [
        ({"algorithm": "grpo", "batch_size": 64, "group_size": 3}, "train_policy.group_size: must divide batch_size"),
        ({"algorithm": "rloo", "group_size": 1}, "train_policy.group_size: rloo needs at least 2"),
        ({"algorithm": "rloo", "grpo_std_normalization": False}, "train_policy.grpo_std_normalization: only grpo"),
        ({"algorithm": "ppo", "loss_aggregation": "sequence_mean"}, "train_policy.loss_aggregation: ppo has only"),
        ({"algorithm": "ppo_lagrangian", "clip_range_high": 0.28}, "train_policy.clip_range_high: only for grpo"),
        ({"algorithm": "reinforce_pp", "dynamic_sampling": True}, "train_policy.dynamic_sampling: only for grpo"),
        (
            {"algorithm": "grpo", "launcher": "ddp", "num_processes": 2, "batch_size": 12, "minibatch_size": 6},
            "train_policy.group_size: must divide batch_size / num_processes",
        ),
        ({"algorithm": "dpo", "reward": [{"source": "rules"}]}, "train_policy.reward: dpo learns from the comparisons"),
        ({"reward": [{"source": "remote"}]}, "train_policy.reward.0.url: required with source remote"),
        (
            {"reward": [{"source": "rules", "url": "http://x"}]},
            "train_policy.reward.0.url: required with source remote",
        ),
        ({"algorithm": "a2c"}, "train_policy.algorithm: Input should be"),
    ],
)
def test_critic_free_params_refuse_what_is_not_built_in_one_line(raw, settings, expected):
    bad = copy.deepcopy(raw)
    bad["train_policy"].update(settings)
    with pytest.raises(ConfigError) as caught:
        parse_params(bad)
    message = str(caught.value)
    assert message.startswith(f"params.yaml: {expected}") and "\n" not in message, message


def test_critic_free_params_that_are_built_are_accepted(raw):
    good = copy.deepcopy(raw)
    good["train_policy"].update(
        algorithm="grpo",
        group_size=8,
        batch_size=64,
        grpo_std_normalization=False,
        loss_aggregation="constant_length",
        clip_range_high=0.28,
        dynamic_sampling=True,
        reward=[{"source": "rules", "weight": 0.5}, {"source": "remote", "url": "http://127.0.0.1:1/get_reward"}],
    )
    params = parse_params(good).train_policy
    assert params.critic_free and params.responses_per_prompt == 8
    assert TrainPolicyParams().responses_per_prompt == 1  # ppo: one response per prompt, group_size unused

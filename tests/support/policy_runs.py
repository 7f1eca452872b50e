"""Policy optimisation on the toy domain: prompts, a token-counting reward, tiny models, the stage as a process."""

import contextlib
import os
import signal
import subprocess
import time

import pandas as pd
import torch
from transformers import GPT2ForSequenceClassification, GPT2LMHeadModel

from rlhf.config import TrainPolicyParams
from rlhf.policy_optimization.models import PolicyModels
from rlhf.policy_optimization.trainer import train_policy
from tests.support.tiny import HELD_OUT, PROMPTS, TOPICS, tiny_gpt2_config  # noqa: F401 (re-exported)


def tiny_models(tokenizer, params: TrainPolicyParams, seed: int = 0, device: str = "cpu") -> PolicyModels:
    torch.manual_seed(seed)
    policy = GPT2LMHeadModel(tiny_gpt2_config(tokenizer)).to(device)
    reference = GPT2LMHeadModel(tiny_gpt2_config(tokenizer)).to(device)
    reference.load_state_dict(policy.state_dict())
    critic = GPT2ForSequenceClassification(tiny_gpt2_config(tokenizer, num_labels=1)).to(device)
    return PolicyModels.build(policy, critic, params, reference=None if params.lora_rank else reference)


def train_on_toy(tokenizer, params: TrainPolicyParams, models=None, reward=None, log=lambda row: 0, **hooks):
    """train_policy on the toy prompts at seed 0: tiny models and the token-counting reward unless given."""
    models = tiny_models(tokenizer, params) if models is None else models
    reward = TokenCountReward(tokenizer) if reward is None else reward
    return train_policy(models, reward, tokenizer, PROMPTS, params, 0, log=log, **hooks)


def toy_params(**changes) -> TrainPolicyParams:
    """The toy-reward runs' settings: fast learning, no KL or EOS penalty, raw scores."""
    toy = {
        "batch_size": 32,
        "minibatch_size": 16,
        "ppo_epochs": 4,
        "learning_rate": 3e-3,
        "value_learning_rate": 3e-3,
        "kl_coef": 0.0,
        "max_new_tokens": 12,
        "missing_eos_penalty": 0.0,
        "score_normalization": "none",
    }
    return TrainPolicyParams(**{**toy, **changes})


class TokenCountReward:
    """Toy reward: how many of the response's tokens fall in a fixed set (a tenth of the vocabulary)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.liked = set(range(100, 100 + len(tokenizer) // 10))

    def __call__(self, prompts, responses):
        ids = self.tokenizer(responses, add_special_tokens=False)["input_ids"]
        return torch.tensor([float(sum(token in self.liked for token in row)) for row in ids])


STAGE_ENV = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}


SMALL_RUN = {
    "iterations": 6,
    "batch_size": 8,
    "minibatch_size": 4,
    "ppo_epochs": 2,
    "max_new_tokens": 10,
    "checkpoint_every": 1,
}


def run_stage(command, project_root):
    return subprocess.run(
        command, cwd=project_root, capture_output=True, text=True, env=STAGE_ENV, timeout=600, check=False
    )


def kill_whole_stage_once(command, project_root, ready, timeout: float = 240) -> None:
    """Start the stage and, once the path `ready` exists, SIGKILL it, its launcher and every worker
    at once: what a machine's failure does to them."""
    import psutil

    process = subprocess.Popen(
        command, cwd=project_root, env=STAGE_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + timeout
    while not ready.exists():
        assert process.poll() is None and time.time() < deadline, f"the stage ended before {ready} existed"
        time.sleep(0.02)
    tree = psutil.Process(process.pid)
    for member in [*tree.children(recursive=True), tree]:
        # A short-lived helper (a compiler probe, a git call) may end between listing and killing.
        with contextlib.suppress(psutil.NoSuchProcess):
            member.send_signal(signal.SIGKILL)
    process.wait()


def kill_after_third_checkpoint(command, root, project_root) -> None:
    """Start the stage and SIGKILL it once its third checkpoint is on disk."""
    process = subprocess.Popen(
        command, cwd=project_root, env=STAGE_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 300
    while not (root / "ckpt" / "iteration-000003").exists():
        assert process.poll() is None and time.time() < deadline, "the stage ended before its third checkpoint"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()


def measured(curve: pd.DataFrame) -> list[str]:
    """The columns that measure the machine (times, throughput, memory), not the run."""
    return [column for column in curve if column.endswith(("_seconds", "_per_second", "_mb"))]


# 8 prompts x G = 4 per rollout, 14 iterations: about 2 s each on this CPU.
BUDGET = {
    "iterations": 14,
    "batch_size": 32,
    "minibatch_size": 16,
    "ppo_epochs": 4,
    "learning_rate": 1e-2,
    "kl_coef": 0.0,
    "max_new_tokens": 10,
    "missing_eos_penalty": 0.0,
    "score_normalization": "none",
}


def critic_free_models(tokenizer, params: TrainPolicyParams, seed: int = 0) -> PolicyModels:
    torch.manual_seed(seed)
    policy = GPT2LMHeadModel(tiny_gpt2_config(tokenizer))
    reference = GPT2LMHeadModel(tiny_gpt2_config(tokenizer))
    reference.load_state_dict(policy.state_dict())
    return PolicyModels.build(policy, None, params, reference=reference)


def train(tokenizer, reward, **settings) -> list[dict]:
    params = TrainPolicyParams(**{**BUDGET, **settings})
    return train_policy(
        critic_free_models(tokenizer, params), reward, tokenizer, PROMPTS, params, 0, log=lambda r: 0
    ).history


def gain(history: list[dict], key: str = "score") -> float:
    """Mean of the last three iterations' `key` minus the first three's."""
    values = [row[key] for row in history]
    return sum(values[-3:]) / 3 - sum(values[:3]) / 3

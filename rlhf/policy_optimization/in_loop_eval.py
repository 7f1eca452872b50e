"""The in-loop evaluation: the win rate against the start policy on fixed held-out prompts.

The wins are counted by rlhf.evaluation, the evaluate stage's code, with the evaluate stage's
judge (rules, or a pairwise llm / openai judge). What differs from the evaluate stage:
  - The start policy is the frozen reference (with LoRA: the policy with its adapters off), the
    one the KL is measured against; its responses are sampled once and reused.
  - Every evaluation samples with the same seed (common random numbers): an unchanged policy
    draws the start's responses again and wins exactly 0.5, and two evaluations differ by what
    the policy learnt rather than by the draw.
  - Sampling runs on a forked RNG, so training's random stream is untouched: a run that
    evaluates and one that does not end with the same weights (tested).
  - With several processes each evaluates its share of the prompts; the trainer sums the wins.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import torch
from accelerate import Accelerator
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlhf import chat
from rlhf.config import TrainPolicyParams
from rlhf.evaluation import wins_over_start
from rlhf.policy_optimization.models import PolicyModels
from rlhf.policy_optimization.rollout import device_clock
from rlhf.sampling import sample_from_policy

if TYPE_CHECKING:
    from rlhf.policy_optimization.trainer import TrainerState


@contextlib.contextmanager
def separate_random_stream(seed: int, device: torch.device):
    """Draws inside come from a stream of their own, seeded with `seed`; on exit the global
    torch generators (the CPU's and `device`'s) are where they were, as if nothing had drawn."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.random.default_generator.manual_seed(seed)
        if device.type == "cuda":
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        yield


class WinRateVsStart:
    """`wins` of the current policy over the start policy's responses, one per held-out prompt."""

    def __init__(
        self, prompts: list[chat.Conversation], topics: list[str | None], judge, win_judge=None, seed: int = 0
    ):
        self.prompts = [chat.as_conversation(prompt) for prompt in prompts]
        self.topics, self.judge, self.win_judge, self.seed = list(topics), judge, win_judge, seed
        self.start_responses: dict[tuple[int, int], list[str]] = {}  # by share: sampled once

    def wins(
        self,
        models: PolicyModels,
        tokenizer: PreTrainedTokenizerBase,
        params: TrainPolicyParams,
        process_index: int = 0,
        num_processes: int = 1,
    ) -> list[float]:
        """1, 0.5 or 0 for each prompt of this process's share (every num_processes-th prompt)."""
        share = slice(process_index, None, num_processes)
        prompts, topics = self.prompts[share], self.topics[share]
        key = (process_index, num_processes)
        if key not in self.start_responses:  # also after a resume: the same seed gives the same draws
            with models.reference_policy() as start:
                self.start_responses[key] = self._sample(start, models, tokenizer, prompts, params)
        finals = self._sample(models.policy, models, tokenizer, prompts, params)
        return wins_over_start(self.judge, prompts, topics, finals, self.start_responses[key], self.win_judge)

    def _sample(
        self,
        model: PreTrainedModel,
        models: PolicyModels,
        tokenizer: PreTrainedTokenizerBase,
        prompts: list[chat.Conversation],
        params: TrainPolicyParams,
    ) -> list[str]:
        """One response per prompt, drawn as the trainer draws them, in batches of `params.batch_size`."""
        rendered = [chat.render_prompt(tokenizer, prompt) for prompt in prompts]
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()  # generation wants the KV cache, which gradient checkpointing turns off in train mode
        texts: list[str] = []
        try:
            with models.generation_context(), separate_random_stream(self.seed, device):
                for start in range(0, len(rendered), params.batch_size):
                    batch = rendered[start : start + params.batch_size]
                    texts += sample_from_policy(
                        model, tokenizer, batch, params.max_new_tokens, params.temperature
                    ).texts
        finally:
            model.train(was_training)
        return texts


def every(iteration: int, every: int) -> bool:
    return every > 0 and iteration % every == 0


def evaluation_due(iteration: int, params: TrainPolicyParams, stopping: str | None) -> bool:
    """Every `eval_every` iterations, and at the last one (the end of the run, or an early stop)."""
    return params.eval_every > 0 and (
        every(iteration, params.eval_every) or iteration == params.iterations or bool(stopping)
    )


def evaluate_in_loop(evaluator: WinRateVsStart, models, tokenizer, params, accelerator: Accelerator) -> dict:
    """The win rate against the start over every process's share of the held-out prompts."""
    device = next(models.trained.parameters()).device
    started = device_clock(device)
    with torch.no_grad(), accelerator.autocast():
        wins = evaluator.wins(models, tokenizer, params, accelerator.process_index, accelerator.num_processes)
    total = accelerator.reduce(torch.tensor([sum(wins), len(wins)], dtype=torch.float64, device=device), "sum")
    return {
        "eval_win_rate": round(total[0].item() / max(total[1].item(), 1.0), 6),
        "eval_seconds": round(device_clock(device) - started, 6),
    }


def remember_if_best(state: TrainerState, models: PolicyModels, iteration: int, win_rate: float) -> None:
    """keep: best: a copy of the policy's trained parameters when this evaluation beats every earlier
    one. A tie keeps the earlier iteration: as good by the judge, and nearer the start policy.
    Under LoRA only the adapters train, so only they are copied."""
    if state.best is not None and win_rate <= state.best["win_rate"]:
        return
    weights = {name: p.detach().to("cpu", copy=True) for name, p in models.policy.named_parameters() if p.requires_grad}
    state.best = {"iteration": iteration, "win_rate": win_rate, "weights": weights}


@torch.no_grad()
def keep_policy(
    models: PolicyModels, state: TrainerState, params: TrainPolicyParams
) -> tuple[int | None, float | None]:
    """Leave in `models` the policy `params.keep` asks for; returns (its iteration, its in-loop win rate)."""
    if params.keep == "best" and state.best is not None:
        for name, parameter in models.policy.named_parameters():
            if name in state.best["weights"]:
                parameter.copy_(state.best["weights"][name])
        return state.best["iteration"], state.best["win_rate"]
    if not state.history:
        return None, None
    return state.history[-1]["iteration"], state.history[-1].get("eval_win_rate")

"""PPO's in-loop evaluation: the win rate against the start policy on fixed held-out prompts.

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

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlhf import chat
from rlhf.config import TrainPolicyParams
from rlhf.evaluation import wins_over_start
from rlhf.policy_optimization.models import PPOModels
from rlhf.sampling import sample_from_policy


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
        models: PPOModels,
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
        models: PPOModels,
        tokenizer: PreTrainedTokenizerBase,
        prompts: list[chat.Conversation],
        params: TrainPolicyParams,
    ) -> list[str]:
        """One response per prompt, drawn as PPO draws them, in batches of `params.batch_size`."""
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

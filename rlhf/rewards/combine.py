"""A weighted sum of reward sources: r = sum_k w_k * r_k(prompt, response)."""

from __future__ import annotations

import torch

from rlhf import chat
from rlhf.rewards import RewardSource


class WeightedReward:
    """`terms` are (name, weight, source). Each call keeps every source's mean score in
    `last_means` by name, so the trainer can log what each part of the reward did."""

    def __init__(self, terms: list[tuple[str, float, RewardSource]]):
        if not terms:
            raise ValueError("a weighted reward needs at least one source")
        self.terms = terms
        self.last_means: dict[str, float] = {}

    def __call__(self, prompts: list[chat.Conversation], responses: list[str]) -> torch.Tensor:
        total = torch.zeros(len(responses))
        for name, weight, source in self.terms:
            scores = source(prompts, responses).detach().float().cpu()
            self.last_means[name] = scores.mean().item() if len(scores) else 0.0
            total += weight * scores
        return total

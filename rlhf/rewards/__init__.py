"""Reward sources for online RL: what scores a policy's responses while it trains.

Every source is a callable `source(prompts, responses) -> scores`: the prompts as conversations
(rlhf.chat), the responses as text, the scores a float tensor (B,) on the CPU. That is the call the
PPO trainer makes of its reward model today (rlhf.policy_optimization.rollout.RewardScorer), so any of these plugs
in where it does.

- rules.RulesReward: the rule judge's principles as a verifiable reward (rlhf.judges.constitution).
- remote.RemoteReward: a reward server over HTTP, OpenRLHF's remote reward-model JSON convention.
- judge_rating.LLMRatingReward / OpenAIRatingReward: an AI judge's expected 1-10 rating (direct RLAIF).
- combine.WeightedReward: a weighted sum of sources.
- server: serves our reward model under that same convention (`rlhf serve reward`).
"""

from __future__ import annotations

from typing import Protocol

import torch

from rlhf import chat


class RewardSource(Protocol):
    def __call__(self, prompts: list[chat.Conversation], responses: list[str]) -> torch.Tensor:
        """One score per (prompt conversation, response).  (B,)"""

"""The rule judge's principles as a verifiable reward: a response's reward is the summed weight of
the principles it meets (rlhf.judges.constitution.RuleJudge.score), the same number the judge ranks by."""

from __future__ import annotations

import torch

from rlhf import chat
from rlhf.config import Principle
from rlhf.judges.constitution import RuleJudge


class RulesReward:
    """`topics` maps a prompt's conversation (chat.to_json) to its topic, which the on-topic
    principle reads; a prompt without one is judged by its own content words."""

    def __init__(self, principles: list[Principle], topics: dict[str, str | None] | None = None):
        self.judge, self.topics = RuleJudge(principles), topics or {}

    def __call__(self, prompts: list[chat.Conversation], responses: list[str]) -> torch.Tensor:
        conversations = [chat.as_conversation(prompt) for prompt in prompts]
        return torch.tensor(
            [
                self.judge.score(chat.last_user_content(c), self.topics.get(chat.to_json(c)), r)[0]
                for c, r in zip(conversations, responses)
            ],
            dtype=torch.float32,
        )

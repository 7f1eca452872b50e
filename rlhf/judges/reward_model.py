"""A judge from a trained reward model: for later rounds of feedback and best-of-n selection."""

from __future__ import annotations

import math

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlhf import chat
from rlhf.judges.base import Judgement, all_pairs, ranks_from_scores
from rlhf.scoring import score_exchanges


class RewardModelJudge:
    name = "reward_model"

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, version: str):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.version = version  # the reward model's checkpoint hash

    def rank_batch(self, items: list[tuple[str, str | None, list[str]]]) -> list[Judgement]:
        conversations = [chat.as_conversation(prompt) for prompt, _, responses in items for _ in responses]
        flat = score_exchanges(
            self.model, self.tokenizer, conversations, [r for _, _, responses in items for r in responses]
        ).tolist()
        judgements, start = [], 0
        for _, _, responses in items:
            scores = [round(s, 6) for s in flat[start : start + len(responses)]]
            start += len(responses)
            # Bradley-Terry: the reward model's own probability that i is preferred to j.
            preferences = {(i, j): 1.0 / (1.0 + math.exp(scores[j] - scores[i])) for i, j in all_pairs(len(scores))}
            reasons = [{"reward": s} for s in scores]
            judgements.append(Judgement(ranks_from_scores(scores), scores, reasons, preferences))
        return judgements

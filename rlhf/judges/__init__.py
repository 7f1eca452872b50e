"""Judges rank the K responses of a prompt. Issue #4 adds llm, openai, reward-model, human, hybrid."""

from rlhf.judges.base import Judgement, ranks_from_scores
from rlhf.judges.rules import RuleJudge

__all__ = ["Judgement", "RuleJudge", "ranks_from_scores"]

"""Judges rank the K responses of a prompt: rules, llm, openai (any compatible endpoint), reward_model."""

from __future__ import annotations

import torch

from rlhf.config import RankResponsesParams
from rlhf.judges.base import Judge, Judgement, ranks_from_scores
from rlhf.judges.rules import RuleJudge

__all__ = ["Judge", "Judgement", "RuleJudge", "make_judge", "ranks_from_scores"]


def make_judge(params: RankResponsesParams, device: torch.device, kind: str | None = None) -> Judge:
    """The AI judge params.yaml asks for (`kind`, default params.judge), its version naming the model."""
    kind = kind or params.judge
    if kind == "rules":
        return RuleJudge(params.principles)
    if kind == "llm":
        from rlhf.judges.llm import LLMJudge
        from rlhf.models import load_policy, load_tokenizer

        config = params.llm
        judge = LLMJudge(
            load_policy(config.model, device), load_tokenizer(config.model), params.judge_preamble(),
            config.chain_of_thought, config.rationale_tokens, config.batch_size,
        )  # fmt: skip
        judge.version = f"{LLMJudge.version}+{config.model}{'+cot' if config.chain_of_thought else ''}"
        return judge
    if kind == "openai":
        from rlhf.judges.openai_compatible import OpenAICompatibleJudge

        config = params.openai
        judge = OpenAICompatibleJudge(preamble=params.judge_preamble(), **config.model_dump())
        judge.version = f"{OpenAICompatibleJudge.version}+{config.model}{'+cot' if config.chain_of_thought else ''}"
        return judge
    from rlhf.judges.reward_model import RewardModelJudge
    from rlhf.models import checkpoint_hash, load_tokenizer
    from rlhf.reward_ensemble import load_reward_model

    tokenizer = load_tokenizer(params.reward_model.path)
    model = load_reward_model(params.reward_model.path, device, tokenizer.pad_token_id)
    return RewardModelJudge(model, tokenizer, checkpoint_hash(params.reward_model.path))

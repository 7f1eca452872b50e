"""Judges rank the K responses of a prompt: rules, llm, openai (any compatible endpoint), reward_model."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rlhf.config import RankResponsesParams
from rlhf.judges.base import Judge, Judgement, ranks_from_scores
from rlhf.judges.constitution import RuleJudge
from rlhf.text import config_digest

if TYPE_CHECKING:  # only the model judges need torch; the rules judge's stage starts without it
    import torch

__all__ = ["Judge", "Judgement", "RuleJudge", "make_judge", "ranks_from_scores"]


def model_judge_version(code_version: str, model: str, chain_of_thought: bool, preamble: str) -> str:
    """A model judge's version: its code, model, whether it reasons first, and its prompt (the
    principles it is told), so that another prompt is another judge (see store.SUPERSEDED_RANKINGS)."""
    return f"{code_version}+{model}{'+cot' if chain_of_thought else ''}+{config_digest(preamble)}"


def make_judge(params: RankResponsesParams, device: torch.device | str, kind: str | None = None) -> Judge:
    """The AI judge params.yaml asks for (`kind`, default params.judge), its version naming its configuration.
    `device` is where a model judge (llm, reward_model) runs: a torch.device, or params.yaml's name for
    one (cpu | cuda | auto), resolved only when a model is loaded, so the rules need no torch."""
    kind = kind or params.judge
    if kind == "rules":
        return RuleJudge(params.principles)
    if kind == "llm":
        from rlhf.judges.llm import LLMJudge
        from rlhf.pretrained import load_policy, load_tokenizer, resolve_device

        config = params.llm
        judge = LLMJudge(
            load_policy(config.model, resolve_device(device)),
            load_tokenizer(config.model),
            params.judge_preamble(),
            config.chain_of_thought,
            config.rationale_tokens,
            config.batch_size,
        )
        judge.version = model_judge_version(LLMJudge.version, config.model, config.chain_of_thought, judge.preamble)
        return judge
    if kind == "openai":
        from rlhf.judges.openai_compatible import OpenAICompatibleJudge

        config = params.openai
        judge = OpenAICompatibleJudge(preamble=params.judge_preamble(), **config.model_dump())
        judge.version = model_judge_version(
            OpenAICompatibleJudge.version, config.model, config.chain_of_thought, params.judge_preamble()
        )
        return judge
    from rlhf.judges.reward_model import RewardModelJudge
    from rlhf.pretrained import checkpoint_hash, load_tokenizer, resolve_device
    from rlhf.reward_models.ensemble import load_reward_model

    tokenizer = load_tokenizer(params.reward_model.path)
    model = load_reward_model(params.reward_model.path, resolve_device(device), tokenizer.pad_token_id)
    return RewardModelJudge(model, tokenizer, checkpoint_hash(params.reward_model.path))

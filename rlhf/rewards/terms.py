"""train_policy.reward as one reward source: the weighted sum of its terms (params: RewardTerm)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import torch
from transformers import PreTrainedTokenizerBase

from rlhf.config import Principle, RewardTerm
from rlhf.rewards import RewardSource
from rlhf.rewards.combine import WeightedReward
from rlhf.rewards.remote import RemoteReward
from rlhf.rewards.rules import RulesReward


def is_reward_model_alone(terms: list[RewardTerm]) -> bool:
    """The default: the reward model with weight 1, which then scores as it always has (no sum)."""
    return len(terms) == 1 and terms[0].source == "reward_model" and terms[0].weight == 1.0


def online_reward(
    terms: list[RewardTerm],
    reward_model: Callable[[], RewardSource],
    principles: list[Principle],
    topics: dict[str, str | None],
    policy_tokenizer: PreTrainedTokenizerBase | None = None,
    device: torch.device | None = None,
) -> RewardSource:
    """One source for the trainer. `reward_model()` loads the reward model, called only where a term
    uses it; the rules read `principles` (rank_responses') and each prompt's topic; a remote server
    gets the exchanges rendered with the policy's tokenizer, as OpenRLHF's trainer renders them; an
    llm judge is loaded on `device`, and it and an openai judge are told the principles."""
    if is_reward_model_alone(terms):
        return reward_model()
    repeated = {source for source, count in Counter(term.source for term in terms).items() if count > 1}
    parts = []
    for index, term in enumerate(terms):
        if term.source == "reward_model":
            source = reward_model()
        elif term.source == "rules":
            source = RulesReward(principles, topics)
        elif term.source in ("llm", "openai"):
            source = judge_rating_reward(term, principles, device or torch.device("cpu"))
        else:
            source = RemoteReward(
                term.url,
                policy_tokenizer,
                term.timeout_s,
                term.max_retries,
                term.backoff_s,
                term.batch_size,
                term.max_concurrency,
            )
        parts.append((f"{term.source}{index}" if term.source in repeated else term.source, term.weight, source))
    return WeightedReward(parts)


def judge_rating_reward(term: RewardTerm, principles: list[Principle], device: torch.device) -> RewardSource:
    """Direct RLAIF: the term's llm or openai judge rating each response (rlhf.rewards.judge_rating)."""
    from rlhf.rewards.judge_rating import LLMRatingReward, OpenAIRatingReward, rating_preamble

    preamble = term.preamble or rating_preamble(principles)
    if term.source == "openai":
        return OpenAIRatingReward(term.openai, preamble)
    from rlhf.pretrained import load_policy, load_tokenizer

    return LLMRatingReward(
        load_policy(term.llm.model, device), load_tokenizer(term.llm.model), preamble, term.llm.batch_size
    )


def usage_of(reward: RewardSource) -> dict[str, dict]:
    """The token usage and cost of each part of `reward` that pays for its calls (an openai judge),
    by the name the trainer logs it under."""
    parts = reward.terms if isinstance(reward, WeightedReward) else [("reward", 1.0, reward)]
    return {
        name: {**source.usage, "cost": round(source.cost, 6)} for name, _, source in parts if hasattr(source, "usage")
    }

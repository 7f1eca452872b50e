"""train_policy.reward as one reward source: the weighted sum of its terms (params: RewardTerm)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

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
) -> RewardSource:
    """One source for the trainer. `reward_model()` loads the reward model, called only where a term
    uses it; the rules read `principles` (rank_responses') and each prompt's topic; a remote server
    gets the exchanges rendered with the policy's tokenizer, as OpenRLHF's trainer renders them."""
    if is_reward_model_alone(terms):
        return reward_model()
    repeated = {source for source, count in Counter(term.source for term in terms).items() if count > 1}
    parts = []
    for index, term in enumerate(terms):
        if term.source == "reward_model":
            source = reward_model()
        elif term.source == "rules":
            source = RulesReward(principles, topics)
        else:
            source = RemoteReward(
                term.url, policy_tokenizer, term.timeout_s, term.max_retries, term.backoff_s, term.batch_size,
                term.max_concurrency,
            )  # fmt: skip
        parts.append((f"{term.source}{index}" if term.source in repeated else term.source, term.weight, source))
    return WeightedReward(parts)

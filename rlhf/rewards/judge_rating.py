"""An AI judge's rating as the online reward: direct RLAIF (Lee et al. 2023, "RLAIF vs. RLHF",
section 2.2, d-RLAIF).

The judge reads the principles, the prompt and one response, and is asked for a rating from 1 to
10. The reward is the expected rating under the judge's probabilities over the ten ratings,
normalised over them, then rescaled to [-1, 1] as in the paper:

    s(x, y) = sum_i i * P(i | x, y) / sum_i P(i | x, y),    r(x, y) = (s - 5.5) / 4.5

so no reward model is trained and the policy is scored by the judge itself, every rollout.

- LLMRatingReward: a local causal LM. The request, 1-10 instruction included, is the user turn
  of the judge's chat template; the answer is prefilled with "Rating:" only. Each rating is read
  as the whole answer " i/10", every token of it (rlhf.judges.llm.ending_logprobs): with a bare
  " 1" the probability of "1" would include that of "10" wherever a tokenizer spells ten as "1"
  then "0". Batched, `batch_size` responses per forward (each needs ten rows, one per rating).
- OpenAIRatingReward: an OpenAI-compatible endpoint. The answer's first token's top log-probs
  give P(i) for the ratings among them (the OpenAI API returns at most 20 alternatives, enough for
  ten); without log-probs, the rating written in the answer (then P = 1 on it). An answer with no
  rating scores the midpoint, 0, and is counted as unparsed. Concurrency, retries, timeouts and
  the token cost come from the openai judge's client (rlhf.judges.openai_compatible).
"""

from __future__ import annotations

import math
import re
from concurrent.futures import ThreadPoolExecutor

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlhf import chat
from rlhf.config import OpenAIJudgeParams, Principle
from rlhf.judges.llm import check_context, ending_logprobs, prefilled
from rlhf.judges.openai_compatible import ChatCompletionsAPI

RATINGS = tuple(range(1, 11))
TEMPLATE = """{preamble}

{context}
Response: {response}
"""
RATING_REQUEST = "Rate the response from 1 (worst) to 10 (best), written as N/10."  # the user turn's last line
RATING_CUE = "Rating:"  # the judge's answer, prefilled
OPENAI_CUE = "Rate the response from 1 (worst) to 10 (best). Answer with the number alone."


def rating_preamble(principles: list[Principle]) -> str:
    """What the judge is told: the principles of rank_responses, as the pairwise judges are told them."""
    wants = "; ".join(p.description or p.name.replace("_", " ") for p in principles)
    return f"You rate a response to a prompt. A better response is: {wants}."


def rating_text(preamble: str, conversation: chat.Conversation, response: str) -> str:
    """The judge's view of one response: a one-message prompt as "Prompt: ...", a longer
    conversation as its turns, then the response."""
    conversation = chat.as_conversation(conversation)
    if chat.is_single_user_turn(conversation):
        context = f"Prompt: {conversation[0]['content']}"
    else:
        context = f"Conversation:\n{chat.transcript(conversation)}"
    return TEMPLATE.format(preamble=preamble, context=context, response=response)


def reward_from_distribution(probabilities: dict[int, float]) -> float | None:
    """(E[rating] - 5.5) / 4.5 over the ratings given, renormalised; None when none has mass."""
    total = sum(probabilities.values())
    if total <= 0:
        return None
    expected = sum(rating * p for rating, p in probabilities.items()) / total
    return (expected - 5.5) / 4.5


class LLMRatingReward:
    """A local judge's expected rating of each response (a RewardSource)."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, preamble: str, batch_size: int = 16):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.preamble, self.batch_size = preamble, batch_size

    @torch.no_grad()
    def __call__(self, prompts: list[chat.Conversation], responses: list[str]) -> torch.Tensor:
        texts = [self._question(rating_text(self.preamble, p, r) + RATING_REQUEST) for p, r in zip(prompts, responses)]
        endings = [f" {rating}/10" for rating in RATINGS]
        scores = []
        for start in range(0, len(texts), self.batch_size):
            logprobs = ending_logprobs(
                self.model, self.tokenizer, texts[start : start + self.batch_size], endings, self._check_context
            )
            probabilities = logprobs.float().softmax(-1)  # (b, 10), normalised over the ten ratings
            expected = probabilities @ torch.tensor(RATINGS, dtype=torch.float32, device=probabilities.device)
            scores.append(((expected - 5.5) / 4.5).cpu())
        return torch.cat(scores) if scores else torch.zeros(0)

    def _question(self, text: str) -> str:
        """The rating request as a user turn of the judge's chat template (the instruction in it),
        and the answer started with the cue alone (rlhf.judges.llm.prefilled)."""
        return prefilled(self.tokenizer, text, RATING_CUE)

    def _check_context(self, tokens: int) -> None:
        check_context(self.model, tokens, "train_policy.reward: rating a response")


class OpenAIRatingReward:
    """An OpenAI-compatible judge's expected rating of each response (a RewardSource), one request
    per response, `max_concurrency` in flight; `usage` and `cost` as the openai judge counts them."""

    def __init__(self, config: OpenAIJudgeParams, preamble: str):
        self.api = ChatCompletionsAPI(
            config.base_url,
            "train_policy.reward.openai",
            config.api_key_env,
            config.timeout_s,
            config.max_retries,
            config.backoff_s,
            config.price_per_1k_prompt_tokens,
            config.price_per_1k_completion_tokens,
        )
        self.model, self.preamble, self.max_concurrency = config.model, preamble, config.max_concurrency

    @property
    def usage(self) -> dict:
        return self.api.usage

    @property
    def cost(self) -> float:
        return self.api.cost

    def __call__(self, prompts: list[chat.Conversation], responses: list[str]) -> torch.Tensor:
        with ThreadPoolExecutor(max_workers=self.max_concurrency) as pool:
            return torch.tensor(list(pool.map(self._rate, prompts, responses)), dtype=torch.float32)

    def _rate(self, prompt: chat.Conversation, response: str) -> float:
        body = {
            "model": self.model,
            "messages": [
                {"role": "system", "content": self.preamble},
                {"role": "user", "content": rating_text("", prompt, response).strip() + "\n" + OPENAI_CUE},
            ],
            "temperature": 0,
            "max_tokens": 2,
            "logprobs": True,
            "top_logprobs": 20,
        }
        choice = self.api.complete(body)
        reward = reward_from_distribution(ratings_from_logprobs(choice.get("logprobs")))
        if reward is None:
            reward = reward_from_distribution(rating_from_text(choice.get("message", {}).get("content") or ""))
        if reward is None:
            self.api.count_unparsed()
            return 0.0  # the midpoint: no signal either way
        return reward


def ratings_from_logprobs(logprobs: dict | None) -> dict[int, float]:
    """{rating: probability} from the first answer token and its top alternatives that read as 1..10."""
    tokens = (logprobs or {}).get("content") or []
    if not tokens:
        return {}
    first = tokens[0]
    candidates = [
        (first.get("token", ""), first.get("logprob")),
        *(
            (alternative.get("token", ""), alternative.get("logprob"))
            for alternative in first.get("top_logprobs") or []
        ),
    ]
    probabilities: dict[int, float] = {}
    for token, logprob in candidates:
        text = token.strip()
        if text.isdigit() and int(text) in RATINGS and logprob is not None:
            probabilities.setdefault(int(text), math.exp(logprob))  # the first listing of a token counts once
    return probabilities


def rating_from_text(text: str) -> dict[int, float]:
    """The first whole number 1..10 written in the answer, as certain."""
    for number in re.findall(r"\b(\d+)\b", text):
        if int(number) in RATINGS:
            return {int(number): 1.0}
    return {}

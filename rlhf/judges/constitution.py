"""The rule-based "constitution" judge: principles are data (params.yaml), not code.

A response's score is the summed weight of the principles it meets; the K responses of a
prompt are ranked by score, equal scores tie, and each response records which principles
it met and failed so that every ranking can be explained.
"""

from __future__ import annotations

import re

from rlhf import chat
from rlhf.config import ContainsAny, ExcludesAll, MentionsTopic, Principle, WordCount
from rlhf.judges.base import Judgement, ranks_from_scores
from rlhf.text import config_digest

NAME = "rules"
VERSION = "1"

_STOPWORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "answer",
        "are",
        "about",
        "can",
        "do",
        "does",
        "for",
        "give",
        "how",
        "i",
        "in",
        "is",
        "it",
        "me",
        "of",
        "on",
        "or",
        "please",
        "say",
        "share",
        "short",
        "some",
        "tell",
        "the",
        "this",
        "to",
        "what",
        "when",
        "where",
        "which",
        "who",
        "why",
        "with",
        "write",
        "you",
        "your",
        "explain",
        "describe",
        "fact",
        "few",
        "note",
        "tip",
        "words",
        "people",
        "like",
        "know",
    ]
)


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def contains_phrase(text_words: list[str], phrase: str) -> bool:
    needle = words(phrase)
    n = len(needle)
    return any(text_words[i : i + n] == needle for i in range(len(text_words) - n + 1))


def is_unsafe(response: str, unsafe_words: list[str]) -> bool:
    """The harmlessness check: does the response contain any of the unsafe phrases?"""
    response_words = words(response)
    return any(contains_phrase(response_words, phrase) for phrase in unsafe_words)


def topic_words(prompt: str, topic: str | None) -> set[str]:
    """The words a response must mention to stay on topic: the given topic, else the prompt's content words."""
    return set(words(topic)) if topic else set(words(prompt)) - _STOPWORDS


def meets(principle: Principle, prompt: str, topic: str | None, response: str) -> bool:
    response_words = words(response)
    if isinstance(principle, ContainsAny):
        return any(contains_phrase(response_words, phrase) for phrase in principle.words)
    if isinstance(principle, ExcludesAll):
        return not any(contains_phrase(response_words, phrase) for phrase in principle.words)
    if isinstance(principle, MentionsTopic):
        return bool(topic_words(prompt, topic) & set(response_words))
    if isinstance(principle, WordCount):
        return principle.min <= len(response_words) <= principle.max
    raise TypeError(f"unknown principle kind: {principle!r}")


class RuleJudge:
    name = NAME

    def __init__(self, principles: list[Principle]):
        self.principles = principles
        # The principles are part of the version: other principles are another judge, whose rankings
        # of the same responses the store keeps beside these (the snapshot counts one: see
        # store.SUPERSEDED_RANKINGS).
        self.version = f"{VERSION}+{config_digest(*(p.model_dump_json() for p in principles))}"

    def check(self, prompt: str, topic: str | None, response: str) -> dict[str, bool]:
        """Which principles one response meets, by principle name."""
        return {p.name: meets(p, prompt, topic, response) for p in self.principles}

    def score(self, prompt: str, topic: str | None, response: str) -> tuple[float, dict[str, bool]]:
        verdict = self.check(prompt, topic, response)
        return sum(p.weight for p in self.principles if verdict[p.name]), verdict

    def rank_batch(self, items: list[tuple[chat.Conversation, str | None, list[str]]]) -> list[Judgement]:
        """The rules read the newest user turn of each conversation (its topic words)."""
        return [
            self.rank(chat.last_user_content(chat.as_conversation(conversation)), topic, responses)
            for conversation, topic, responses in items
        ]

    def rank(self, prompt: str, topic: str | None, responses: list[str]) -> Judgement:
        scored = [self.score(prompt, topic, r) for r in responses]
        scores = [s for s, _ in scored]
        return Judgement(ranks=ranks_from_scores(scores), scores=scores, reasons=[v for _, v in scored])

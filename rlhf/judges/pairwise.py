"""Judges that compare two responses at a time (RLAIF, Lee et al. 2023), with position debiasing.

Each pair is shown in both orders; P(i better than j) = (P(first | i, j) + 1 - P(first | j, i)) / 2,
which cancels a judge's preference for a position. The pair counts as position-biased when the
judge picks the same position in both orders. A K-way ranking comes from the C(K,2) preferences.
"""

from __future__ import annotations

from dataclasses import dataclass

from rlhf import chat
from rlhf.judges.base import Judgement, all_pairs, judgement_from_preferences

TEMPLATE = """{preamble}

{context}
Response 1: {first}
Response 2: {second}
"""
RATIONALE_CUE = "Think about which response is better, then say which.\nRationale:"
CHOICE_CUE = "Preferred response (1 or 2):"


def comparison_text(preamble: str, conversation: str | chat.Conversation, first: str, second: str) -> str:
    """The judge's view of a pair: a one-message prompt as "Prompt: ...", a longer conversation
    as its turns (rlhf.chat.transcript), then both responses."""
    conversation = chat.as_conversation(conversation)
    if chat.is_single_user_turn(conversation):
        context = f"Prompt: {conversation[0]['content']}"
    else:
        context = f"Conversation:\n{chat.transcript(conversation)}"
    return TEMPLATE.format(preamble=preamble, context=context, first=first, second=second)


@dataclass
class PairwiseStats:
    pairs: int = 0
    position_biased: int = 0

    @property
    def position_bias_rate(self) -> float:
        return self.position_biased / self.pairs if self.pairs else 0.0


class PairwiseJudge:
    """Subclasses implement `first_preferred(queries)`: P(Response 1 is better) per (conversation, first, second)."""

    name = "pairwise"
    version = "1"

    def __init__(self):
        self.stats = PairwiseStats()

    def first_preferred(self, queries: list[tuple[chat.Conversation, str, str]]) -> list[float]:
        raise NotImplementedError

    def rank_batch(self, items: list[tuple[chat.Conversation, str | None, list[str]]]) -> list[Judgement]:
        queries, index = [], []
        for item, (prompt, _, responses) in enumerate(items):
            conversation = chat.as_conversation(prompt)  # a plain string prompt is one user turn
            for i, j in all_pairs(len(responses)):
                queries += [(conversation, responses[i], responses[j]), (conversation, responses[j], responses[i])]
                index.append((item, i, j))
        answers = self.first_preferred(queries)
        preferences: list[dict[tuple[int, int], float]] = [{} for _ in items]
        for n, (item, i, j) in enumerate(index):
            forward, backward = answers[2 * n], answers[2 * n + 1]
            preferences[item][(i, j)] = (forward + 1.0 - backward) / 2.0
            self.stats.pairs += 1
            # Biased: the same position wins in both orders. An order at exactly 0.5 picks no position.
            self.stats.position_biased += (forward > 0.5 and backward > 0.5) or (forward < 0.5 and backward < 0.5)
        return [
            judgement_from_preferences(len(responses), prefs, [beats(prefs, i) for i in range(len(responses))])
            for (_, _, responses), prefs in zip(items, preferences)
        ]


def beats(preferences: dict[tuple[int, int], float], i: int) -> dict:
    """Response i's reasons: its probability of beating each other response."""
    p_beats = {}
    for (a, b), p in preferences.items():
        if a == i:
            p_beats[str(b)] = round(p, 4)
        elif b == i:
            p_beats[str(a)] = round(1.0 - p, 4)
    return {"p_beats": p_beats}

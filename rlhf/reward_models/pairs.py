"""Preference pairs as a reward model reads them, and how often a scorer orders them as the judge did.

Shared by reward-model training (its held-out report) and `evaluate`; it needs no trainer, so
`evaluate` does not import TRL, peft or datasets for it.
"""

from __future__ import annotations

import pandas as pd
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlhf.scoring import frame_texts, score_texts


def preference_pairs(comparisons: pd.DataFrame, tokenizer: PreTrainedTokenizerBase) -> pd.DataFrame:
    """Strict pairs only (ties carry no preference), as the texts the reward model reads (rlhf.scoring)."""
    strict = comparisons[~comparisons["tie"]]
    return pd.DataFrame(
        {"chosen": frame_texts(tokenizer, strict, "chosen"), "rejected": frame_texts(tokenizer, strict, "rejected")}
    )


def pair_accuracy(chosen: list[float], rejected: list[float]) -> float:
    """How often a score orders a pair as the judge did; equal scores count half."""
    if not chosen:
        return float("nan")
    hits = [1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(chosen, rejected)]
    return sum(hits) / len(hits)


def accuracy_on(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, comparisons: pd.DataFrame
) -> tuple[float, int]:
    """(accuracy, pairs): how often the model scores the judge's chosen response higher, on strict pairs."""
    pairs = preference_pairs(comparisons, tokenizer)
    chosen, rejected = score_pairs(model, tokenizer, pairs)
    return pair_accuracy(chosen.tolist(), rejected.tolist()), len(pairs)


def score_pairs(model, tokenizer: PreTrainedTokenizerBase, pairs: pd.DataFrame) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen scores, rejected scores) of preference_pairs' rows, every distinct text scored once."""
    scores = score_texts(model, tokenizer, [*pairs["chosen"], *pairs["rejected"]])
    return scores[: len(pairs)], scores[len(pairs) :]

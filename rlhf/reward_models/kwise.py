"""K-wise reward-model training (InstructGPT, Ouyang et al. 2022, section 3.5).

One batch element is one ranking: a prompt's K responses go through the model once each, and all
the ranking's strict pairs are scored from those K rewards. The loss of a ranking is the mean of
-log sigmoid(r_winner - r_loser) over its pairs, so a prompt with many correlated pairs counts
as much as any other. Plain pairwise training is the same loop with every pair its own
"ranking" of two responses: 2 forward passes per pair instead of K per C(K,2) pairs.

This sits beside TRL's RewardTrainer rather than on top of it: RewardTrainer tokenises a
chosen/rejected column pair per row, and a ranking of K texts with a pair index does not fit that
row shape without replacing its dataset preparation, collator and loss, which is all of it.
Like RewardTrainer (its `disable_dropout`, on by default) it trains with dropout off
(`disable_dropout`), so every path that trains a reward or cost model reads the same function.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd
import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase, get_cosine_schedule_with_warmup

from rlhf.scoring import batch_of, encode, frame_texts
from rlhf.tracking import Tracker


@dataclass(frozen=True)
class Ranking:
    """One prompt's responses as full texts, and its strict pairs as (winner, loser) indices."""

    texts: tuple[str, ...]
    pairs: tuple[tuple[int, int], ...]


@dataclass
class RankingBatch:
    input_ids: torch.Tensor  # (N, L) every text of every ranking in the batch
    attention_mask: torch.Tensor  # (N, L)
    winners: torch.Tensor  # (P,) row of each pair's better text
    losers: torch.Tensor  # (P,)
    pair_weights: torch.Tensor  # (P,) 1 / (pairs of its ranking * rankings in the batch): sums to 1

    def to(self, device: torch.device) -> RankingBatch:
        return RankingBatch(*(t.to(device) for t in vars(self).values()))


def rankings_from_comparisons(comparisons: pd.DataFrame, tokenizer: PreTrainedTokenizerBase) -> list[Ranking]:
    """Group the snapshot's strict pairs (ties carry no preference) back into their rankings, each
    response as the text the reward model reads (rlhf.scoring)."""
    strict = comparisons[~comparisons["tie"]].sort_values(["ranking_id", "chosen_id", "rejected_id"])
    rankings = []
    for _, group in strict.groupby("ranking_id", sort=True):
        texts: dict[str, str] = {}
        ids = [*group["chosen_id"], *group["rejected_id"]]
        for rid, text in zip(
            ids, [*frame_texts(tokenizer, group, "chosen"), *frame_texts(tokenizer, group, "rejected")]
        ):
            texts.setdefault(rid, text)
        order = sorted(texts)
        index = {rid: i for i, rid in enumerate(order)}
        pairs = tuple((index[c], index[r]) for c, r in zip(group["chosen_id"], group["rejected_id"]))
        rankings.append(Ranking(tuple(texts[rid] for rid in order), pairs))
    return rankings


def as_pairs(rankings: list[Ranking]) -> list[Ranking]:
    """Plain pairwise batching: each pair becomes a ranking of its own two texts."""
    return [Ranking((r.texts[w], r.texts[loser]), ((0, 1),)) for r in rankings for w, loser in r.pairs]


class RankingCollator:
    """Tokenises each ranking's texts (rlhf.scoring's convention, cut to max_length, right-padded)
    and lays out its pair index."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int):
        self.tokenizer, self.max_length = tokenizer, max_length

    def __call__(self, rankings: list[Ranking]) -> RankingBatch:
        ids = encode(self.tokenizer, [t for r in rankings for t in r.texts], self.max_length)
        tokens = batch_of(self.tokenizer, ids, torch.device("cpu"))
        return RankingBatch(tokens["input_ids"], tokens["attention_mask"], *pair_layout(rankings))


def pair_layout(rankings: list[Ranking]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(winners, losers, weights): each pair's rows among the rankings' texts laid end to end, and
    its weight 1 / (pairs of its ranking * rankings), so each ranking weighs the same."""
    winners, losers, weights, offset = [], [], [], 0
    for ranking in rankings:
        for w, loser in ranking.pairs:
            winners.append(offset + w)
            losers.append(offset + loser)
            weights.append(1.0 / (len(ranking.pairs) * len(rankings)))
        offset += len(ranking.texts)
    return torch.tensor(winners), torch.tensor(losers), torch.tensor(weights)


def disable_dropout(model: torch.nn.Module) -> torch.nn.Module:
    """Dropout off for training, in place: every nn.Dropout's p and every float `attention_dropout`
    (Llama-style attention reads it as a number, not a module) set to 0.

    Huang et al. 2024, "The N+ Implementation Details of RLHF with PPO", detail 1: dropout makes
    the reward (and the log-probs) of one text random, so the Bradley-Terry margins train on noise;
    TRL's RewardTrainer does the same (`RewardConfig.disable_dropout`, default True)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0
    return model


def ranking_loss(rewards: torch.Tensor, batch: RankingBatch, margins: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted Bradley-Terry loss: sum over pairs of w * -log sigmoid(r_winner - r_loser - m).  (scalar)

    m (P,), default 0: a margin the reward gap must clear (Llama 2, Touvron et al. 2023, eq. 2),
    the `margin` column TRL's RewardTrainer subtracts; the pipeline trains without one."""
    gaps = rewards[batch.winners] - rewards[batch.losers]  # (P,)
    if margins is not None:
        gaps = gaps - margins
    return -(batch.pair_weights * F.logsigmoid(gaps)).sum()


def train_on_rankings(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    rankings: list[Ranking],
    *,
    epochs: float,
    batch_size: int,
    learning_rate: float,
    max_length: int,
    seed: int,
    progress: Callable[[int, int], None] | None = None,
    tracker: Tracker | None = None,
) -> dict:
    """Train `model` in place on `rankings`, `batch_size` of them per optimizer step.

    `progress(step, total_steps)` is called about twenty times over the run.

    Returns {"steps", "pairs_seen", "seconds", "pairs_per_s", "train_loss"} (loss: last epoch's mean).
    """
    device = next(model.parameters()).device
    collate = RankingCollator(tokenizer, max_length)
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(rankings) / batch_size)
    total_steps = max(1, round(epochs * steps_per_epoch))
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    schedule = get_cosine_schedule_with_warmup(optimizer, math.ceil(0.05 * total_steps), total_steps)
    disable_dropout(model).train()
    step, pairs_seen, losses = 0, 0, []
    started = time.perf_counter()
    while step < total_steps:
        order = torch.randperm(len(rankings), generator=generator).tolist()
        losses = []
        for start in range(0, len(order), batch_size):
            if step == total_steps:
                break
            chosen = [rankings[i] for i in order[start : start + batch_size]]
            batch = collate(chosen).to(device)
            rewards = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, 0]
            loss = ranking_loss(rewards, batch)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            learning_rate_now = schedule.get_last_lr()[0]
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            pairs_seen += len(batch.winners)
            step += 1
            if tracker:
                tracker.log_metrics(
                    {"loss": losses[-1], "grad_norm": grad_norm.item(), "learning_rate": learning_rate_now}, step
                )
            if progress and (step % max(1, total_steps // 20) == 0 or step == total_steps):
                progress(step, total_steps)
    seconds = time.perf_counter() - started
    model.eval()
    return {
        "steps": step,
        "pairs_seen": pairs_seen,
        "seconds": round(seconds, 3),
        "pairs_per_s": round(pairs_seen / seconds, 1),
        "train_loss": round(sum(losses) / max(len(losses), 1), 4),
    }

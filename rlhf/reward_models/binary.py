"""A reward model from thumbs up/down (binary labels), alone or beside the pairwise one.

A binary label says of one response whether it is desirable, with no second response to compare
it to: the signal KTO learns a policy from directly (Ethayarajh et al. 2024, "KTO: Model
Alignment as Prospect Theoretic Optimization"), and one that is cheaper to collect than
preferences (a thumb on a deployed answer). Here it trains the reward model instead, read as a
classifier of desirability:

    P(desirable | x, y) = sigmoid(r(x, y))
    L_binary = -[w_D * z * log sigmoid(r) + w_U * (1 - z) * log(1 - sigmoid(r))]    z = 1 if desirable

the logistic (cross-entropy) loss of a one-logit classifier. Unbalanced data (thumbs down are
rarer on a deployed model) is weighed as KTO weighs it, by class: w_D n_D = w_U n_U, so each class
carries half the loss (the KTO paper recommends lambda_D n_D / (lambda_U n_U) in [1, 4/3]; we take 1).

How it differs from Bradley-Terry on pairs (Ouyang et al. 2022, eq. 1; L_pair = -log sigmoid(r(x,
y_w) - r(x, y_l))): Bradley-Terry sees only differences between responses to the same prompt, so
r is fixed only up to a constant per prompt, and a hard prompt's best answer still wins its pairs.
The binary loss fixes r's level: 0 is the boundary between good and bad, and rewards compare across
prompts; but it cannot tell a good answer to a hard prompt from a bad one that a person judged
leniently. With `train_reward.labels: both` the loss is the sum, L_pair + L_binary, each the mean
over its own examples in the batch: pairs order the responses of a prompt, labels anchor the level.

Departures: the class weights are fixed from the training labels (not tuned); the sum is
unweighted. The model, tokenisation and scoring convention are the pairwise model's (rlhf.scoring),
and TRL's RewardTrainer runs the loop: this module gives it a collator that lays a batch's pairs
and single responses end to end, and a compute_loss over both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import PreTrainedTokenizerBase
from trl import RewardTrainer

from rlhf.scoring import batch_of, encode, frame_texts, score_texts

PAIR = -1  # the `desirable` of a pair row: it is a comparison, not a label


def pair_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Bradley-Terry: mean of -log sigmoid(r_chosen - r_rejected) (Ouyang et al. 2022, eq. 1).  (P,) -> ()"""
    return -F.logsigmoid(chosen - rejected).mean()


def binary_loss(rewards: torch.Tensor, desirable: torch.Tensor, class_weights: tuple[float, float]) -> torch.Tensor:
    """Weighted logistic loss of sigmoid(r) against desirability, the mean over the labels (see the module docstring).  (S,) -> ()

    `class_weights`: (w_D, w_U), the weight of a desirable and of an undesirable label."""
    weights = torch.where(desirable > 0.5, class_weights[0], class_weights[1])  # (S,)
    return (weights * F.binary_cross_entropy_with_logits(rewards, desirable, reduction="none")).mean()


def balanced_class_weights(desirable: pd.Series) -> tuple[float, float]:
    """(w_D, w_U) with w_D n_D = w_U n_U = n / 2: each class carries half the loss, and a balanced
    set weighs 1 each. Labels of one class only: 1 each (there is nothing to weigh against)."""
    n, n_desirable = len(desirable), int(desirable.sum())
    n_undesirable = n - n_desirable
    if not n_desirable or not n_undesirable:
        return 1.0, 1.0
    return n / (2 * n_desirable), n / (2 * n_undesirable)


def training_rows(
    pairs: pd.DataFrame | None, labels: pd.DataFrame | None, tokenizer: PreTrainedTokenizerBase, max_length: int
) -> Dataset:
    """One dataset of both kinds, as token ids under the scoring convention, cut to max_length:
    a pair is (chosen_ids, rejected_ids, desirable PAIR); a label is (chosen_ids: its response,
    rejected_ids: [], desirable 1 or 0). `pairs`: preference_pairs' texts; `labels`: the binary
    snapshot's rows (prompt_messages, completion_messages, label)."""
    chosen, rejected, desirable = [], [], []
    if pairs is not None and len(pairs):
        chosen += encode(tokenizer, list(pairs["chosen"]), max_length)
        rejected += encode(tokenizer, list(pairs["rejected"]), max_length)
        desirable += [PAIR] * len(pairs)
    if labels is not None and len(labels):
        chosen += encode(tokenizer, frame_texts(tokenizer, labels, "completion"), max_length)
        rejected += [[] for _ in range(len(labels))]
        desirable += [int(v) for v in labels["label"]]
    return Dataset.from_dict({"chosen_ids": chosen, "rejected_ids": rejected, "desirable": desirable})


@dataclass
class PairsAndLabelsCollator:
    """A batch's pairs' chosen texts, then their rejected texts, then the labelled responses, end to
    end and right-padded (rlhf.scoring.batch_of), with `pairs` (P) and `desirable` (S,)."""

    tokenizer: PreTrainedTokenizerBase

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        pairs = [e for e in examples if e["desirable"] == PAIR]
        labels = [e for e in examples if e["desirable"] != PAIR]
        ids = [e["chosen_ids"] for e in pairs] + [e["rejected_ids"] for e in pairs] + [e["chosen_ids"] for e in labels]
        batch = batch_of(self.tokenizer, ids, torch.device("cpu"))  # (2P + S, T)
        batch["pairs"] = torch.tensor(len(pairs))
        batch["desirable"] = torch.tensor([float(e["desirable"]) for e in labels])  # (S,)
        return batch


class PairsAndLabelsRewardTrainer(RewardTrainer):
    """TRL's RewardTrainer with the loss L_pair + L_binary over a batch of pairs and labels."""

    def __init__(self, *args, class_weights: tuple[float, float] = (1.0, 1.0), **kwargs):
        self.class_weights = class_weights
        super().__init__(*args, **kwargs)

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = ["chosen_ids", "rejected_ids", "desirable"]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        pairs, desirable = int(inputs.pop("pairs")), inputs.pop("desirable")
        outputs = model(**inputs, use_cache=False)
        rewards = outputs.logits[:, 0].float()  # (2P + S,)
        losses = {}
        if pairs:
            losses["pair_loss"] = pair_loss(rewards[:pairs], rewards[pairs : 2 * pairs])
        if len(desirable):
            losses["binary_loss"] = binary_loss(rewards[2 * pairs :], desirable, self.class_weights)
        loss = sum(losses.values())
        mode = "train" if model.training else "eval"
        for name, value in losses.items():
            self._metrics[mode][name].append(value.item())
        return (loss, outputs) if return_outputs else loss


@torch.no_grad()
def binary_report(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, labels: pd.DataFrame) -> dict:
    """How a reward model reads held-out binary labels: accuracy of sigmoid(r) > 0.5, balanced
    accuracy (the mean of the two classes' recalls), and the AUC: the share of (desirable,
    undesirable) pairs of labels it scores in that order, ties half (what a policy optimiser needs
    of a reward; 0.5 is chance)."""
    if labels.empty:
        return {"test_labels": 0}
    rewards = score_texts(model, tokenizer, frame_texts(tokenizer, labels, "completion")).cpu().numpy()
    actual = labels["label"].to_numpy(dtype=bool)
    predicted = rewards > 0
    recalls = [float((predicted[actual == c] == c).mean()) for c in (True, False) if (actual == c).any()]
    return {
        "test_labels": len(labels),
        "test_desirable_share": round(float(actual.mean()), 4),
        "test_label_accuracy": round(float((predicted == actual).mean()), 4),
        "test_label_balanced_accuracy": round(sum(recalls) / len(recalls), 4),
        "test_label_auc": round(auc(rewards[actual], rewards[~actual]), 4),
    }


def auc(desirable: np.ndarray, undesirable: np.ndarray) -> float:
    """P(r_desirable > r_undesirable) over every (desirable, undesirable) pair, ties half; NaN
    without both classes (the Mann-Whitney U statistic over n_D n_U)."""
    if not len(desirable) or not len(undesirable):
        return float("nan")
    gaps = desirable[:, None] - undesirable[None, :]  # (D, U)
    return float((gaps > 0).mean() + 0.5 * (gaps == 0).mean())

"""Rounds of preference collection at a fixed budget, to measure how many labels a reward model needs.

Each round: fit the reward model on the labels so far, let a selection policy (rlhf.selection)
choose `budget` more pairs from the unlabelled pool, have a simulated annotator pool
(rlhf.simulated_annotators) answer them, and record held-out accuracy against the true labels.

Where it departs from the pipeline's reward model: the encoder (MiniLM) is frozen and only a linear
Bradley-Terry head is fitted on its mean-pooled features, r(x) = w . phi(x), so
P(a > b) = sigmoid(w . (phi(a) - phi(b))) (Bradley & Terry, 1952), with an L2 penalty. A round
then takes milliseconds instead of a fine-tuning's minutes, so many rounds, policies and seeds fit
a 2-core CPU. The ensemble is M such heads on bootstrap resamples of the labels (Efron, 1979), the
members whose disagreement BALD reads; their mean margin is the reward model's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from transformers import AutoModel

from rlhf.pretrained import load_tokenizer
from rlhf.reward_models import report
from rlhf.scoring import batch_of, encode
from rlhf.selection import Selection, bald, select
from rlhf.simulated_annotators import AnnotatorPool


@torch.no_grad()
def encoder_features(model_dir: str | Path, texts: Sequence[str], max_length: int, batch_size: int = 32) -> np.ndarray:
    """Mean-pooled, L2-normalised last hidden states of a frozen encoder, each text cut from the
    left to max_length as rlhf.scoring cuts it.  (N, H)"""
    tokenizer = load_tokenizer(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    ids = encode(tokenizer, list(texts), max_length)
    out = np.zeros((len(ids), model.config.hidden_size), dtype=np.float32)
    by_length = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    for start in range(0, len(ids), batch_size):
        rows = by_length[start : start + batch_size]
        batch = batch_of(tokenizer, [ids[i] for i in rows], torch.device("cpu"))
        hidden = model(**batch).last_hidden_state  # (B, T, H)
        mask = batch["attention_mask"].unsqueeze(-1).float()  # (B, T, 1)
        pooled = (hidden * mask).sum(1) / mask.sum(1)  # (B, H)
        out[rows] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
    return out


def fit_bradley_terry(diffs: np.ndarray, prefers_a: np.ndarray, l2: float) -> np.ndarray:
    """w minimising mean(-log sigmoid(s * w . d)) + l2/2 |w|^2, s = +1 where a was preferred.  (H,)"""
    d = torch.as_tensor(diffs, dtype=torch.float64)
    sign = torch.as_tensor(np.where(prefers_a, 1.0, -1.0))
    w = torch.zeros(d.shape[1], dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([w], max_iter=200, tolerance_grad=1e-9, line_search_fn="strong_wolfe")

    def loss():
        optimiser.zero_grad()
        value = -torch.nn.functional.logsigmoid(sign * (d @ w)).mean() + 0.5 * l2 * (w @ w)
        value.backward()
        return value

    optimiser.step(loss)
    return w.detach().numpy()


@dataclass
class LinearRewardEnsemble:
    weights: np.ndarray  # (M, H)

    @classmethod
    def fit(cls, diffs: np.ndarray, prefers_a: np.ndarray, members: int, l2: float, rng: np.random.Generator):
        """Member 0 on every label, the others on bootstrap resamples of them."""
        draws = [np.arange(len(diffs))] + [rng.integers(len(diffs), size=len(diffs)) for _ in range(members - 1)]
        return cls(np.stack([fit_bradley_terry(diffs[i], prefers_a[i], l2) for i in draws]))

    def margins(self, diffs: np.ndarray) -> np.ndarray:
        """Each member's r(a) - r(b).  (M, N)"""
        return self.weights @ diffs.T

    def accuracy(self, diffs: np.ndarray, a_is_better: np.ndarray) -> float:
        """How often the members' mean margin orders a pair as the true label does; 0 counts half."""
        mean = self.margins(diffs).mean(0)
        return report.accuracy(np.where(a_is_better, mean, -mean))


@dataclass
class PreferencePool:
    """Pairs as features and truths: the unlabelled pool people answer from, or a held-out set."""

    diffs: np.ndarray  # (N, H) phi(a) - phi(b)
    a_is_better: np.ndarray  # (N,) bool, the known (human or gold) preference
    a_is_longer: np.ndarray  # (N,) bool
    prompt_ids: np.ndarray  # (N,)


def run_rounds(
    pool: PreferencePool,
    test: PreferencePool,
    policy: Selection,
    budget: int,
    rounds: int,
    annotators: AnnotatorPool,
    seed: int,
    members: int = 5,
    l2: float = 1e-3,
) -> list[dict]:
    """Round 0 labels `budget` pairs at random (nothing to be uncertain with yet); each later round
    fits the ensemble and lets `policy` pick `budget` more. One record per round after its labels:
    {labels, test_accuracy}."""
    rng = np.random.default_rng(seed)
    chosen = list(rng.choice(len(pool.diffs), size=budget, replace=False))
    labelled, answers, curve = [], [], []
    for round_ in range(rounds):
        labelled += chosen
        answers += list(annotators.answer(pool.a_is_better[chosen], pool.a_is_longer[chosen]).prefers_a)
        model = LinearRewardEnsemble.fit(pool.diffs[labelled], np.array(answers), members, l2, rng)
        curve.append({"labels": len(labelled), "test_accuracy": model.accuracy(test.diffs, test.a_is_better)})
        if round_ == rounds - 1:
            break
        rest = np.setdiff1d(np.arange(len(pool.diffs)), labelled)
        candidates = pd.DataFrame({"prompt_id": pool.prompt_ids[rest], "row": rest})
        if policy in ("uncertainty", "mix"):
            candidates["uncertainty"] = bald(model.margins(pool.diffs[rest]))
        chosen = list(select(candidates, budget, policy, seed=int(rng.integers(2**31)))["row"])
    return curve

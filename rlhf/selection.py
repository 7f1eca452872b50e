"""Which pairs go to people: a budget per round, chosen by uncertainty, the AI judge's margin, or at random.

Uncertainty is the reward ensemble's disagreement on a pair, measured as BALD, the mutual
information between the label and the model (Houlsby et al., 2011, "Bayesian Active Learning for
Classification and Preference Learning", eq. 2), with the ensemble's members standing in for
posterior samples (Lakshminarayanan et al., 2017, "Deep Ensembles"; Gleave & Irving, 2022,
"Uncertainty Estimation for Language Reward Models", who used such ensembles to pick labels):

    p_m = sigmoid(r_m(a) - r_m(b))                       Bradley-Terry, member m's P(a beats b)
    BALD = H(mean_m p_m) - mean_m H(p_m)                H the binary entropy

BALD is high where the members are each sure but disagree, and low where they all call it a coin
flip (noise no label removes). One model alone has no disagreement: its predictive entropy H(p)
is used instead (uncertainty sampling, Lewis & Gale, 1994).

Diversity: the ranked candidates are taken at most `per_prompt` per prompt in a pass, so the
budget spreads over prompts before any prompt gets a second item (a per-prompt cap, simpler than
the batch-diverse selection of BatchBALD or core sets).

`reason` says, for each chosen item, which policy chose it, its score and its rank.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd

Selection = Literal["uncertainty", "judge_margin", "random", "mix"]


def binary_entropy(p: np.ndarray) -> np.ndarray:
    """H(p) in nats, 0 at p = 0 or 1."""
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return -(p * np.log(p) + (1 - p) * np.log(1 - p))


def bald(member_margins: np.ndarray) -> np.ndarray:
    """BALD of each pair from the members' reward differences r_m(a) - r_m(b).  (M, P) -> (P,)

    With one member (M = 1) it is the predictive entropy H(p) instead (see the module docstring)."""
    margins = np.atleast_2d(np.asarray(member_margins, dtype=float))
    p = 1.0 / (1.0 + np.exp(-margins))  # (M, P)
    if len(p) == 1:
        return binary_entropy(p[0])
    return binary_entropy(p.mean(0)) - binary_entropy(p).mean(0)


def _normalised_rank(values: pd.Series) -> pd.Series:
    """0 for the most wanted value (the highest), 1 for the least; ties share their mean rank."""
    return (values.rank(ascending=False, method="average") - 1) / max(len(values) - 1, 1)


def priority(candidates: pd.DataFrame, selection: Selection, seed: int) -> tuple[pd.Series, str]:
    """(score, its name): higher first. Candidates carry `uncertainty` and/or `judge_margin` columns
    as their policy needs; judge_margin is the judge's confidence |2P - 1|, so its closest calls score highest."""
    if selection == "random":
        return pd.Series(np.random.default_rng(seed).random(len(candidates)), index=candidates.index), "draw"
    if selection == "uncertainty":
        return candidates["uncertainty"], "bald"
    if selection == "judge_margin":
        return -candidates["judge_margin"], "judge_margin"
    # mix: the mean of the available signals' normalised ranks (rank fusion: the two scales differ)
    signals = [_normalised_rank(candidates["uncertainty"])] if "uncertainty" in candidates else []
    if "judge_margin" in candidates:
        signals.append(_normalised_rank(-candidates["judge_margin"]))
    if not signals:
        raise ValueError("selection mix: needs a reward ensemble (uncertainty) or an AI judge (judge_margin)")
    return 1.0 - sum(signals) / len(signals), "mixed_rank"


def spread_over_prompts(order: list, prompt_ids: pd.Series, per_prompt: int) -> list:
    """`order` (index labels, best first) re-ordered in passes: each pass takes at most `per_prompt`
    items of a prompt, in their order, so every prompt is served before any gets more."""
    passes: list[list] = []
    taken: dict[str, int] = {}
    for label in order:
        prompt = prompt_ids[label]
        turn = taken.get(prompt, 0) // per_prompt
        taken[prompt] = taken.get(prompt, 0) + 1
        if turn == len(passes):
            passes.append([])
        passes[turn].append(label)
    return [label for items in passes for label in items]


def select(
    candidates: pd.DataFrame, budget: int | None, selection: Selection, seed: int = 0, per_prompt: int = 1
) -> pd.DataFrame:
    """The `budget` candidates to put to people, best first, each with its `reason`.

    candidates: one row per pair with `prompt_id` and the columns `priority` reads. budget None:
    every candidate, in the policy's order."""
    if candidates.empty:
        return candidates.assign(reason=pd.Series(dtype=str))
    score, name = priority(candidates, selection, seed)
    ranked = score.sort_values(ascending=False, kind="stable").index.tolist()
    chosen = spread_over_prompts(ranked, candidates["prompt_id"], per_prompt)[:budget]
    rank = {label: position + 1 for position, label in enumerate(ranked)}
    reasons = [f"{selection}: {name} {score[label]:.4f}, rank {rank[label]} of {len(ranked)}" for label in chosen]
    return candidates.loc[chosen].assign(reason=reasons)

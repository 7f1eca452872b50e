"""What ends a run before its last iteration: NaN or inf, a KL ceiling, the reward-hacking monitors
and a gold score that stopped improving (Gao et al. 2022, "Scaling Laws for Reward Model Overoptimization")."""

from __future__ import annotations

import math

from rlhf.config import TrainPolicyParams
from rlhf.errors import TrainingStopped
from rlhf.policy_optimization.checkpoint import Checkpoints


def stop_if_unsafe(stats: dict, iteration: int, params: TrainPolicyParams, checkpoints: Checkpoints | None) -> None:
    """NaN or inf anywhere, or KL over the configured ceiling, ends the run with a clear message."""
    where = (checkpoints.latest() if checkpoints else None) or "none"
    for name, value in stats.items():
        if not math.isfinite(value):
            raise TrainingStopped(f"iteration {iteration}: {name} is {value}; last good checkpoint: {where}")
    if params.max_kl is not None and stats.get("kl", 0.0) > params.max_kl:
        raise TrainingStopped(
            f"iteration {iteration}: KL {stats['kl']:.3f} is above train_policy.max_kl = {params.max_kl}; "
            f"last good checkpoint: {where}"
        )


def reward_hacking_alarm(stats: dict, params: TrainPolicyParams) -> str | None:
    """The first monitor over its early-stop threshold, as a sentence; None when all are within."""
    limits = {
        "kl": params.early_stop_kl,
        "repetition": params.early_stop_repetition,
        "response_length": params.early_stop_response_length,
    }
    for name, limit in limits.items():
        if limit is not None and stats[name] > limit:
            return f"{name} {stats[name]:.3f} passed early_stop_{name} = {limit}"
    return None


def gold_plateau(history: list[dict], params: TrainPolicyParams) -> str | None:
    """A sentence when the gold score has not passed its best for `early_stop_gold_patience`
    iterations: past that point more proxy reward no longer buys gold (Gao et al. 2022)."""
    patience = params.early_stop_gold_patience
    golds = [row["gold_score"] for row in history if "gold_score" in row]
    if patience is None or len(golds) <= patience:
        return None
    best = max(range(len(golds)), key=golds.__getitem__)
    if len(golds) - 1 - best >= patience:
        return f"gold score {golds[-1]:.3f} has not passed its best {golds[best]:.3f} for {patience} iterations"
    return None

"""train_cost's decision: train Safe RLHF's cost model only where something downstream reads it.

`train_cost.when: needed` skips training unless `train_policy.algorithm` reads a cost model; the
skip writes the untrained marker (rlhf.reward_models.untrained) and imports neither torch nor
transformers, which took about 10 of the stage's 16 s on the demo.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd

from rlhf.config import Params
from rlhf.reward_models.untrained import COST_READERS, skip_cost_model
from rlhf.tracking import Tracker


def train_cost_model_when_read(
    labels: pd.DataFrame,
    params: Params,
    init_dir: Path,
    model_dir: Path,
    progress: Callable[[int, int], None] | None = None,
    tracker: Tracker | None = None,
) -> dict:
    """The cost model's metrics: trained on `labels` from `init_dir` into `model_dir`, or the skip's."""
    algorithm = params.train_policy.algorithm
    if params.train_cost.when == "needed" and algorithm not in COST_READERS:
        reason = f"train_policy.algorithm is {algorithm}, which reads no cost model (train_cost.when: always)"
        return skip_cost_model(model_dir, reason, len(labels))
    from rlhf.pretrained import resolve_device
    from rlhf.reward_models.cost import train_cost_model

    return train_cost_model(
        labels,
        init_dir,
        params.train_cost,
        params.seed,
        resolve_device(params.device),
        model_dir,
        progress=progress,
        tracker=tracker,
    )

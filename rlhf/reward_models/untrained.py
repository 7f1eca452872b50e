"""A cost-model directory that holds no model: the marker saying why, written and read without torch.

`train_cost` skips training when no algorithm downstream reads a cost model, or when there is
nothing to learn from; that stage then imports only this (torch and transformers took about 10 of
its 16 s on the demo, for a file of one line).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

# Written into the model directory when there was nothing to learn from, instead of a model.
UNTRAINED_MARKER = "untrained.json"
# The policy algorithms that read a cost model (train_cost.when: needed trains it only for these).
COST_READERS = {"ppo_lagrangian"}


def skip_cost_model(out_dir: Path, reason: str, labelled_responses: int) -> dict:
    """No cost model: out_dir holds UNTRAINED_MARKER with the reason (load_cost_model reports it)."""
    if out_dir.exists():
        shutil.rmtree(out_dir)  # a model an earlier run left must not pass for this run's
    out_dir.mkdir(parents=True)
    (out_dir / UNTRAINED_MARKER).write_text(json.dumps({"reason": reason}))
    return {"trained": False, "reason": reason, "labelled_responses": labelled_responses}


def untrained_reason(directory: Path) -> str | None:
    """Why `directory` holds no cost model, or None where it holds one."""
    marker = directory / UNTRAINED_MARKER
    return json.loads(marker.read_text())["reason"] if marker.exists() else None

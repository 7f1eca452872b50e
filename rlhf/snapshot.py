"""Read the comparisons snapshot that `store_comparisons` writes for DVC (see FeedbackStore.snapshot_comparisons):
the files are checked here, the SQL that joins them is rlhf.store.snapshot's."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from rlhf.errors import StoreError
from rlhf.store import snapshot as snapshot_sql

SNAPSHOT_PARTS = ("pairs", "prompts", "responses")


def _parts(snapshot_dir: str | Path) -> list[str]:
    """The snapshot's three part files, or one error naming those missing."""
    snapshot_dir = Path(snapshot_dir)
    missing = [part for part in SNAPSHOT_PARTS if not (snapshot_dir / f"{part}.parquet").is_file()]
    if missing:
        raise StoreError(
            f"{snapshot_dir}: not a comparisons snapshot (missing {', '.join(f'{m}.parquet' for m in missing)}); "
            "run the store_comparisons stage"
        )
    return [str(snapshot_dir / f"{part}.parquet") for part in SNAPSHOT_PARTS]


def read_comparisons(snapshot_dir: str | Path) -> pd.DataFrame:
    """Every pair of the snapshot with its prompt and both texts, in the snapshot's order:
    ranking_id, prompt_id, chosen_id, rejected_id, prompt, prompt_messages, topic, split, chosen,
    rejected, chosen_messages, rejected_messages, margin, tie, weight, judge, judge_version,
    policy_checkpoint. The *_messages columns are JSON chat messages (rlhf.chat)."""
    return snapshot_sql.read_pairs(*_parts(snapshot_dir))


def read_safety_labels(snapshot_dir: str | Path) -> pd.DataFrame:
    """Every response that carries a harmlessness label, with its prompt: response_id, prompt,
    prompt_messages, split, response, response_messages, unsafe (bool), ordered by response_id."""
    _, prompts, responses = _parts(snapshot_dir)
    return snapshot_sql.read_safety_labels(prompts, responses)

"""Read the comparisons snapshot that `store_comparisons` writes for DVC (see FeedbackStore.snapshot_comparisons).

The one SQL outside rlhf/store: DuckDB over the snapshot's Parquet files, never the store. It stays
here so that the training stages, which read snapshots, do not depend on the store's code: DVC
would re-run them on every change to rlhf/store (tests/pipeline/test_dvc_graph.py).
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pandas as pd

from rlhf.errors import StoreError

SNAPSHOT_PARTS = ("pairs", "prompts", "responses")
# The thumbs up/down the same scope takes (FeedbackStore.snapshot_binary_labels), beside the parts.
BINARY_LABELS = "binary_labels.parquet"


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
    pairs, prompts, responses = _parts(snapshot_dir)
    with duckdb.connect() as con:
        return con.execute(
            """SELECT c.ranking_id, c.prompt_id, c.chosen_id, c.rejected_id, p.prompt,
                      p.messages AS prompt_messages, p.topic, p.split,
                      ch.response AS chosen, rj.response AS rejected,
                      ch.messages AS chosen_messages, rj.messages AS rejected_messages, c.margin, c.tie, c.weight,
                      c.judge, c.judge_version, ch.policy_checkpoint
               FROM read_parquet(?) c
               JOIN read_parquet(?) p USING (prompt_id)
               JOIN read_parquet(?) ch ON ch.response_id = c.chosen_id
               JOIN read_parquet(?) rj ON rj.response_id = c.rejected_id
               ORDER BY c.ranking_id, c.chosen_id, c.rejected_id""",
            [pairs, prompts, responses, responses],
        ).df()


def read_safety_labels(snapshot_dir: str | Path) -> pd.DataFrame:
    """Every response that carries a harmlessness label, with its prompt: response_id, prompt,
    prompt_messages, split, response, response_messages, unsafe (bool), ordered by response_id."""
    _, prompts, responses = _parts(snapshot_dir)
    with duckdb.connect() as con:
        return con.execute(
            """SELECT r.response_id, p.prompt, p.messages AS prompt_messages, p.split, r.response,
                      r.messages AS response_messages, r.unsafe
               FROM read_parquet(?) r JOIN read_parquet(?) p USING (prompt_id)
               WHERE r.unsafe IS NOT NULL ORDER BY r.response_id""",
            [responses, prompts],
        ).df()

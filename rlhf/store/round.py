"""One round of the store_comparisons stage: store what rank_responses wrote, check that the store
holds what the snapshot's scope names, write the snapshot, and the figures the stage reports.

Not imported by `rlhf.store` itself: it reads the params schema and agreement (pandas), which the
store's commands do not need.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rlhf.errors import InputError
from rlhf.snapshot import BINARY_LABELS
from rlhf.store.scope import snapshot_scope

if TYPE_CHECKING:
    import pandas as pd

    from rlhf.config import Params
    from rlhf.store.feedback_store import FeedbackStore


@dataclass(frozen=True)
class StoredRound:
    """What store_round did: `added`, the rows each table gained; `metrics`, the stage's metrics file
    (snapshot_comparisons, store counts, queue_waiting, agreement)."""

    added: dict[str, int]
    metrics: dict

    @property
    def low_agreement(self) -> list[str]:
        """The annotators who agree little with the others (agreement_report's low_agreement)."""
        return self.metrics["agreement"]["low_agreement"]["annotators"]


def round_scope(params: Params, responses: pd.DataFrame) -> dict:
    """store.snapshot resolved: this round's policies (those that sampled the responses file) and the
    earlier rounds' that store.snapshot.rounds keeps (rounds.yaml lists them)."""
    wanted = params.store.snapshot
    kept = [r for r in params.round.earlier if wanted.rounds == "all" or r.number in wanted.rounds]
    return snapshot_scope(
        wanted.rankings,
        wanted.imports,
        responses["policy_checkpoint"].unique().tolist(),
        [r.policy_checkpoint for r in kept],
        wanted.label_sources,
    )


def store_round(
    store: FeedbackStore,
    params: Params,
    run: dict,
    prompts: pd.DataFrame,
    responses: pd.DataFrame,
    rankings: pd.DataFrame,
    queue: pd.DataFrame,
    snapshot_dir: str | Path,
) -> StoredRound:
    """Ingest one rank_responses output (prompts, responses, rankings, the queue for people) as `run`,
    then snapshot to `snapshot_dir` what params' store.snapshot takes, this run's rankings preferred
    over other versions of their judge for the same responses. InputError, before any snapshot, when
    the scope names an import or an earlier round the store does not hold."""
    from rlhf.agreement import agreement_report

    added = store.ingest(run, prompts, responses, rankings, queue)
    scope = round_scope(params, responses)
    if absent := store.absent_sources(scope):
        raise InputError(
            f"store.snapshot takes {', '.join(absent)}, which {store.path} does not hold "
            "(import it, restore the store, or narrow store.snapshot)"
        )
    rows = store.snapshot_comparisons(snapshot_dir, rankings["ranking_id"], scope)
    binary_rows = store.snapshot_binary_labels(Path(snapshot_dir) / BINARY_LABELS, scope)
    metrics = {
        "snapshot_comparisons": rows,
        "snapshot_binary_labels": binary_rows,
        "store": store.counts(),
        "queue_waiting": int(store.waiting_items()),
        "agreement": agreement_report(store.pair_labels(), store.human_ranks()),
    }
    return StoredRound(added, metrics)

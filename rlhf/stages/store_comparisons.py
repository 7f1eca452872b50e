"""Stage store_comparisons: ingest rankings (and items for people) into the DuckDB store; snapshot
the comparisons its scope takes (store.snapshot: this configuration's rankings by default), human
ones included, leaving out AI pairs that were routed to people."""

import pandas as pd

from rlhf.agreement import agreement_report
from rlhf.config import Params
from rlhf.errors import InputError
from rlhf.stages._stage import params_from, parse_paths, run_info, run_stage, write_json
from rlhf.store import FeedbackStore, snapshot_scope

STAGE = "store_comparisons"


def scope_of(params: Params, responses: pd.DataFrame) -> dict:
    """store.snapshot resolved: this round's policies (those that sampled the responses file) and the
    earlier rounds' that store.snapshot.rounds keeps (rounds.yaml lists them)."""
    wanted = params.store.snapshot
    earlier = params.round.earlier
    kept = [r for r in earlier if wanted.rounds == "all" or r.number in wanted.rounds]
    return snapshot_scope(
        wanted.rankings,
        wanted.imports,
        responses["policy_checkpoint"].unique().tolist(),
        [r.policy_checkpoint for r in kept],
        wanted.label_sources,
    )


def main() -> None:
    args = parse_paths(STAGE, ["prompts", "responses", "rankings", "queue"], ["comparisons", "metrics"])
    params = params_from(args)
    store = FeedbackStore(params.store.path, params.store.lock_timeout_s)
    rankings = pd.read_parquet(args.rankings)
    added = store.ingest(
        run_info(STAGE),
        pd.read_parquet(args.prompts),
        pd.read_parquet(args.responses),
        rankings,
        pd.read_parquet(args.queue),
    )
    # this run's rankings count over other versions of their judge for the same responses
    scope = scope_of(params, pd.read_parquet(args.responses))
    if absent := store.absent_sources(scope):
        raise InputError(
            f"store.snapshot takes {', '.join(absent)}, which {store.path} does not hold "
            "(import it, restore the store, or narrow store.snapshot)"
        )
    rows = store.snapshot_comparisons(args.comparisons, rankings["ranking_id"], scope)
    counts = store.counts()
    waiting = store.waiting_items()
    write_json(
        args.metrics,
        {
            "snapshot_comparisons": rows,
            "store": counts,
            "queue_waiting": int(waiting),
            "agreement": (agreement := agreement_report(store.pair_labels(), store.human_ranks())),
        },
    )
    print(f"{STAGE}: added {added}; snapshot holds {rows} comparisons; {waiting} items wait for people")
    if low := agreement["low_agreement"]["annotators"]:
        print(f"{STAGE}: low agreement with the other annotators: {', '.join(low)} (rlhf store agreement)")


if __name__ == "__main__":
    run_stage(STAGE, main)

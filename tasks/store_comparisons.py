"""Stage store_comparisons: ingest rankings (and items for people) into the DuckDB store; snapshot
all comparisons, human ones included, leaving out AI pairs that were routed to people."""

import pandas as pd

from rlhf.agreement import agreement_report
from rlhf.store import FeedbackStore
from tasks._stage import params_from, parse_paths, run_info, run_stage, write_json

STAGE = "store_comparisons"


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
    rows = store.snapshot_comparisons(args.comparisons, rankings["ranking_id"])
    counts = store.counts()
    waiting = store.waiting_items()
    write_json(
        args.metrics,
        {"snapshot_comparisons": rows, "store": counts, "queue_waiting": int(waiting),
         "agreement": (agreement := agreement_report(store.pair_labels(), store.human_ranks()))},
    )  # fmt: skip
    print(f"{STAGE}: added {added}; snapshot holds {rows} comparisons; {waiting} items wait for people")
    if low := agreement["low_agreement"]["annotators"]:
        print(f"{STAGE}: low agreement with the other annotators: {', '.join(low)} (rlhf store agreement)")


if __name__ == "__main__":
    run_stage(STAGE, main)

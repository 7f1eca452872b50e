"""Stage store_comparisons: ingest rankings (and items for people) into the DuckDB store; snapshot
the comparisons its scope takes (store.snapshot: this configuration's rankings by default), human
ones included, leaving out AI pairs that were routed to people (rlhf.store.round.store_round)."""

import pandas as pd

from rlhf.stages._stage import params_from, parse_paths, run_info, run_stage, write_json
from rlhf.store import FeedbackStore
from rlhf.store.round import store_round

STAGE = "store_comparisons"


def main() -> None:
    args = parse_paths(STAGE, ["prompts", "responses", "rankings", "queue"], ["comparisons", "metrics"])
    params = params_from(args)
    inputs = {name: pd.read_parquet(getattr(args, name)) for name in ("prompts", "responses", "rankings", "queue")}
    stored = store_round(
        FeedbackStore(params.store.path, params.store.lock_timeout_s),
        params,
        run_info(STAGE),
        **inputs,
        snapshot_dir=args.comparisons,
    )
    write_json(args.metrics, stored.metrics)
    rows, waiting = stored.metrics["snapshot_comparisons"], stored.metrics["queue_waiting"]
    print(f"{STAGE}: added {stored.added}; snapshot holds {rows} comparisons; {waiting} items wait for people")
    if low := stored.low_agreement:
        print(f"{STAGE}: low agreement with the other annotators: {', '.join(low)} (rlhf store agreement)")


if __name__ == "__main__":
    run_stage(STAGE, main)

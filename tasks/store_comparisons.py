"""Stage store_comparisons: ingest rankings into the DuckDB store; snapshot all comparisons."""

import pandas as pd

from rlhf.store import FeedbackStore
from tasks._stage import params_from, parse_paths, run_info, run_stage

STAGE = "store_comparisons"


def main() -> None:
    args = parse_paths(STAGE, ["prompts", "responses", "rankings"], ["comparisons"])
    params = params_from(args)
    store = FeedbackStore(params.store.path, params.store.lock_timeout_s)
    added = store.ingest(
        run_info(STAGE),
        pd.read_parquet(args.prompts),
        pd.read_parquet(args.responses),
        pd.read_parquet(args.rankings),
    )
    rows = store.snapshot_comparisons(args.comparisons)
    print(f"{STAGE}: added {added}; snapshot holds {rows} comparisons")


if __name__ == "__main__":
    run_stage(STAGE, main)

"""Stage rank_responses: the judge params.yaml names ranks each prompt's K responses and says why (rlhf.ranking)."""

import pandas as pd

from rlhf.ranking import rank_responses
from rlhf.stages._stage import log_progress, params_from, parse_paths, run_stage, write_json, write_parquet

STAGE = "rank_responses"


def main() -> None:
    args = parse_paths(STAGE, ["prompts", "responses"], ["rankings", "queue", "metrics"])
    params = params_from(args)
    rankings, queue, report = rank_responses(
        params.rank_responses,
        pd.read_parquet(args.prompts),
        pd.read_parquet(args.responses),
        params.device,  # resolved only for a model judge: the rules need no torch
        log_progress(f"{STAGE}: prompts ranked"),
    )
    write_parquet(rankings, args.rankings)
    write_parquet(queue, args.queue)
    write_json(args.metrics, report)
    print(f"{STAGE}: {report['prompts']} prompts ranked by {report['judge']}; {len(queue)} items queued for people")


if __name__ == "__main__":
    run_stage(STAGE, main)

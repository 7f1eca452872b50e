"""Stage rank_responses: the judge params.yaml names ranks each prompt's K responses and says why."""

import pandas as pd

from rlhf.judges import make_judge
from rlhf.models import resolve_device
from rlhf.ranking import judge_report, rank_all
from tasks._stage import log_progress, params_from, parse_paths, run_stage, write_json, write_parquet

STAGE = "rank_responses"


def main() -> None:
    args = parse_paths(STAGE, ["prompts", "responses"], ["rankings", "metrics"])
    params = params_from(args)
    judge = make_judge(params.rank_responses, resolve_device(params.device))
    rankings = rank_all(
        judge, pd.read_parquet(args.prompts), pd.read_parquet(args.responses),
        params.rank_responses.batch_prompts, log_progress(f"{STAGE}: prompts ranked"),
    )  # fmt: skip
    write_parquet(rankings, args.rankings)
    write_json(args.metrics, judge_report(judge, rankings))
    print(f"{STAGE}: ranked {rankings['ranking_id'].nunique()} prompts with the {judge.name} judge")


if __name__ == "__main__":
    run_stage(STAGE, main)

"""Stage rank_responses: the judge ranks each prompt's K responses and says why."""

import pandas as pd

from rlhf.judges import RuleJudge
from rlhf.ranking import rank_all
from tasks._stage import params_from, parse_paths, run_stage, write_parquet

STAGE = "rank_responses"


def main() -> None:
    args = parse_paths(STAGE, ["prompts", "responses"], ["rankings"])
    judge = RuleJudge(params_from(args).rank_responses.principles)
    rankings = rank_all(judge, pd.read_parquet(args.prompts), pd.read_parquet(args.responses))
    write_parquet(rankings, args.rankings)
    print(f"{STAGE}: ranked {rankings['ranking_id'].nunique()} prompts with the {judge.name} judge")


if __name__ == "__main__":
    run_stage(STAGE, main)

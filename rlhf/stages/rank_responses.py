"""Stage rank_responses: the judge params.yaml names ranks each prompt's K responses and says why."""

import pandas as pd

from rlhf.judges import make_judge
from rlhf.ranking import RANKING_COLUMNS, judge_all, judge_report, people_queue
from rlhf.stages._stage import log_progress, params_from, parse_paths, run_stage, write_json, write_parquet

STAGE = "rank_responses"


def main() -> None:
    args = parse_paths(STAGE, ["prompts", "responses"], ["rankings", "queue", "metrics"])
    params = params_from(args)
    config = params.rank_responses
    responses = pd.read_parquet(args.responses)
    prompts = pd.read_parquet(args.prompts)
    if config.judge == "human":  # people rank on the ranking page (`rlhf annotate serve`)
        rankings, pairs = pd.DataFrame(columns=RANKING_COLUMNS), None
        report = {"judge": "human", "prompts": 0, "responses": 0}
    else:
        kind = config.ai_judge if config.judge == "hybrid" else config.judge
        judge = make_judge(config, params.device, kind)  # the device is resolved only for a model judge
        rankings, pairs = judge_all(
            judge,
            prompts,
            responses,
            config.batch_prompts,
            log_progress(f"{STAGE}: prompts ranked"),
            unsafe_words=config.unsafe_words,
        )
        report = judge_report(judge, rankings)
        if config.unsafe_words:
            report["unsafe_share"] = round(float(rankings["reasons"].str.contains('"unsafe": true').mean()), 4)
    queue = people_queue(config, prompts, responses, pairs, params.device)
    if config.human.budget is not None and config.judge in ("human", "hybrid"):
        report.update(selection=config.human.selection, budget=config.human.budget)
    report["queued_for_people"] = len(queue)
    write_parquet(rankings, args.rankings)
    write_parquet(queue, args.queue)
    write_json(args.metrics, report)
    print(f"{STAGE}: {report['prompts']} prompts ranked by {report['judge']}; {len(queue)} items queued for people")


if __name__ == "__main__":
    run_stage(STAGE, main)

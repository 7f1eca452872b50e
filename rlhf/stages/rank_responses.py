"""Stage rank_responses: the judge params.yaml names ranks each prompt's K responses and says why (rlhf.ranking).

With `workers.rank_responses` above 1 (and a judge other than people) the stage runs itself again
as that many processes under torchrun, each judging its share of the prompt batches
(rlhf.sharding); the rankings are those one process gives, and a run killed part-way keeps the
batches it finished (--parts_dir).
"""

import pandas as pd

from rlhf.ranking import JudgedBatches, finish_ranking, ranking_judge
from rlhf.sharding import BatchParts, run_batches, start_workers
from rlhf.stages._stage import log_progress, params_from, parse_paths, run_stage, write_json, write_parquet
from rlhf.text import content_id

STAGE = "rank_responses"


def main() -> None:
    args = parse_paths(STAGE, ["prompts", "responses"], ["rankings", "queue", "metrics", "parts_dir"])
    params = params_from(args)
    config = params.rank_responses
    # people rank on the page: nothing for workers to share
    worker = start_workers(STAGE, params.workers.rank_responses if config.judge != "human" else 1)
    prompts, responses = pd.read_parquet(args.prompts), pd.read_parquet(args.responses)
    device = params.device  # resolved only for a model judge: the rules need no torch
    if worker.world > 1:
        from rlhf.pretrained import resolve_device  # here: the rules judge's stage runs without torch

        device = worker.place(resolve_device(params.device))
    judge = ranking_judge(config, device)
    rankings = pairs = None
    if judge is not None:
        batches = JudgedBatches(judge, prompts, responses, config.batch_prompts, config.unsafe_words)
        # What the parts were judged from: a part of another judge, setting or response set is discarded.
        fingerprint = {
            "rank_responses": config.model_dump(mode="json"),
            "judge": [judge.name, batches.version],
            "responses": content_id(*responses["response_id"]),
        }
        parts = BatchParts(args.parts_dir, fingerprint)
        tables = run_batches(
            len(batches.batches), batches.judge_batch, parts, worker, log_progress(f"{worker.label(STAGE)}: batches")
        )
        if tables is None:  # not rank 0: rank 0 writes
            return
        rankings, pairs = batches.combine(tables)
    rankings, queue, report = finish_ranking(config, judge, prompts, responses, rankings, pairs, params.device)
    write_parquet(rankings, args.rankings)
    write_parquet(queue, args.queue)
    write_json(args.metrics, report)
    if judge is not None:
        parts.remove()
    print(f"{STAGE}: {report['prompts']} prompts ranked by {report['judge']}; {len(queue)} items queued for people")


if __name__ == "__main__":
    run_stage(STAGE, main)

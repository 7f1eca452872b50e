"""The columns of the frames the stages pass on (data/responses.parquet, data/rankings.parquet, the
annotation queue), here with no other import so torch-free code (the importers, `rlhf store`) can
build them: rlhf.sampling and rlhf.ranking, which produce them, load torch."""

RESPONSE_COLUMNS = [
    "response_id",
    "prompt_id",
    "sample_index",
    "response",
    "messages",
    "rendered_prompt",
    "policy_checkpoint",
    "sampling",
]
RANKING_COLUMNS = ["ranking_id", "response_id", "prompt_id", "rank", "score", "reasons", "judge", "judge_version"]
QUEUE_COLUMNS = ["item_id", "prompt_id", "response_ids", "reason"]

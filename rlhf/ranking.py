"""Apply a judge to every prompt's K responses: one ranking per prompt, one row per response."""

from __future__ import annotations

import json

import pandas as pd

from rlhf.judges import RuleJudge
from rlhf.text import content_id

RANKING_COLUMNS = ["ranking_id", "response_id", "prompt_id", "rank", "score", "reasons", "judge", "judge_version"]


def rank_all(judge: RuleJudge, prompts: pd.DataFrame, responses: pd.DataFrame) -> pd.DataFrame:
    by_prompt = prompts.set_index("prompt_id")
    rows = []
    for prompt_id, group in responses.sort_values(["prompt_id", "sample_index"]).groupby("prompt_id", sort=True):
        prompt = by_prompt.loc[prompt_id]
        topic = None if pd.isna(prompt["topic"]) else prompt["topic"]
        judgement = judge.rank(prompt["prompt"], topic, list(group["response"]))
        # The same judge over the same responses is the same ranking: re-runs add nothing.
        ranking_id = content_id(prompt_id, judge.name, judge.version, *sorted(group["response_id"]))
        for response_id, rank, score, reasons in zip(
            group["response_id"], judgement.ranks, judgement.scores, judgement.reasons
        ):
            reasons_json = json.dumps(reasons, sort_keys=True)
            rows.append((ranking_id, response_id, prompt_id, rank, score, reasons_json, judge.name, judge.version))
    return pd.DataFrame(rows, columns=RANKING_COLUMNS)

"""Apply a judge to every prompt's K responses: one ranking per prompt, one row per response."""

from __future__ import annotations

import json

import pandas as pd

from rlhf import chat
from rlhf.judges import Judge
from rlhf.judges.base import all_pairs
from rlhf.judges.rules import is_unsafe
from rlhf.text import config_digest, content_id

RANKING_COLUMNS = ["ranking_id", "response_id", "prompt_id", "rank", "score", "reasons", "judge", "judge_version"]
QUEUE_COLUMNS = ["item_id", "prompt_id", "response_ids", "reason"]


def queue_item(prompt_id: str, response_ids: list[str], reason: str) -> tuple:
    """A queue row: a prompt and the responses a person should rank (a pair: sorted, so it matches
    the store's pair key)."""
    ids = sorted(response_ids) if len(response_ids) == 2 else list(response_ids)
    return (content_id(prompt_id, *ids), prompt_id, json.dumps(ids), reason)


def queue_everything(responses: pd.DataFrame) -> pd.DataFrame:
    """Judge `human`: every prompt's K responses go to people."""
    groups = responses.sort_values(["prompt_id", "sample_index"]).groupby("prompt_id", sort=True)
    rows = [queue_item(prompt_id, list(group["response_id"]), "human") for prompt_id, group in groups]
    return pd.DataFrame(rows, columns=QUEUE_COLUMNS)


def rank_all(
    judge: Judge,
    prompts: pd.DataFrame,
    responses: pd.DataFrame,
    batch_prompts: int = 32,
    progress=None,
    route_below: float | None = None,
    unsafe_words: list[str] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rankings, queue): the judge's rankings, and the pairs whose confidence is below `route_below`
    (hybrid routing) as items for the human queue. With `unsafe_words`, each response's reasons
    also say whether it is unsafe (the harmlessness label, independent of its rank)."""
    # The unsafe words label the ranking too: other words are another ranking of the same responses.
    version = f"{judge.version}+unsafe-{config_digest(*unsafe_words)}" if unsafe_words else judge.version
    by_prompt = prompts.set_index("prompt_id")
    conversations = dict(zip(prompts["prompt_id"], chat.conversations_of(prompts)))
    groups = list(responses.sort_values(["prompt_id", "sample_index"]).groupby("prompt_id", sort=True))
    rows, queue = [], []
    for start in range(0, len(groups), batch_prompts):
        chunk = groups[start : start + batch_prompts]
        items = []
        for prompt_id, group in chunk:
            prompt = by_prompt.loc[prompt_id]
            topic = None if pd.isna(prompt["topic"]) else prompt["topic"]
            items.append((conversations[prompt_id], topic, list(group["response"])))
        for (prompt_id, group), judgement in zip(chunk, judge.rank_batch(items)):
            # The same judge over the same responses is the same ranking: re-runs add nothing.
            ranking_id = content_id(prompt_id, judge.name, version, *sorted(group["response_id"]))
            for response_id, text, rank, score, reasons in zip(
                group["response_id"], group["response"], judgement.ranks, judgement.scores, judgement.reasons
            ):
                if unsafe_words:
                    reasons = {**reasons, "unsafe": is_unsafe(text, unsafe_words)}
                reasons_json = json.dumps(reasons, sort_keys=True)
                rows.append((ranking_id, response_id, prompt_id, rank, score, reasons_json, judge.name, version))
            if route_below is not None:
                ids = list(group["response_id"])
                queue += [
                    queue_item(prompt_id, [ids[i], ids[j]], "low_confidence")
                    for i, j in all_pairs(len(ids))
                    if judgement.confidence(i, j) < route_below
                ]
        if progress:
            progress(min(start + batch_prompts, len(groups)), len(groups))
    return pd.DataFrame(rows, columns=RANKING_COLUMNS), pd.DataFrame(queue, columns=QUEUE_COLUMNS)


def judge_report(judge: Judge, rankings: pd.DataFrame) -> dict:
    """The ranking stage's metrics: what judged, how much, and (for pairwise AI judges) how biased."""
    report = {
        "judge": judge.name,
        "judge_version": rankings["judge_version"].iloc[0] if len(rankings) else judge.version,
        "prompts": int(rankings["ranking_id"].nunique()),
        "responses": len(rankings),
        "tie_share": round(float(rankings.duplicated(["ranking_id", "rank"], keep=False).mean()), 4)
        if len(rankings)
        else 0.0,
    }
    stats = getattr(judge, "stats", None)
    if stats is not None:
        report.update(pairs_judged=stats.pairs, position_bias_rate=round(stats.position_bias_rate, 4))
    usage = getattr(judge, "usage", None)
    if usage is not None:
        report.update(usage, cost=round(judge.cost, 6))
    return report

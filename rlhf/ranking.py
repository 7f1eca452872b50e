"""The rank_responses stage: apply a judge to every prompt's K responses (one ranking per prompt,
one row per response), and the queue of what people rank (everything, the judge's unsure pairs, or
a budget by rlhf.selection)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from rlhf import chat
from rlhf.config import HumanSelectionParams, RankResponsesParams
from rlhf.frames import QUEUE_COLUMNS, RANKING_COLUMNS
from rlhf.judges import Judge, make_judge
from rlhf.judges.base import all_pairs
from rlhf.judges.constitution import is_unsafe
from rlhf.selection import bald, select
from rlhf.text import config_digest, content_id

if TYPE_CHECKING:
    import torch


def rank_responses(
    config: RankResponsesParams,
    prompts: pd.DataFrame,
    responses: pd.DataFrame,
    device: str | torch.device,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """The judge `config` names ranks each prompt's K responses and says why; returns the rankings,
    the queue for people and the stage's metrics. Judge human: no rankings, people rank on the
    ranking page (`rlhf annotate serve`). `device` is where a model judge runs (resolved only then)."""
    if config.judge == "human":
        rankings, pairs = pd.DataFrame(columns=RANKING_COLUMNS), None
        report = {"judge": "human", "prompts": 0, "responses": 0}
    else:
        judge = make_judge(config, device, config.ai_judge if config.judge == "hybrid" else config.judge)
        rankings, pairs = judge_all(
            judge, prompts, responses, config.batch_prompts, progress, unsafe_words=config.unsafe_words
        )
        report = judge_report(judge, rankings)
        if config.unsafe_words:
            report["unsafe_share"] = round(float(rankings["reasons"].str.contains('"unsafe": true').mean()), 4)
    queue = people_queue(config, prompts, responses, pairs, device)
    if config.human.budget is not None and config.judge in ("human", "hybrid"):
        report.update(selection=config.human.selection, budget=config.human.budget)
    report["queued_for_people"] = len(queue)
    return rankings, queue, report


def queue_item(prompt_id: str, response_ids: list[str], reason: str) -> tuple:
    """A queue row: a prompt and the responses a person should rank (a pair: sorted, so it matches
    the store's pair key)."""
    ids = sorted(response_ids) if len(response_ids) == 2 else list(response_ids)
    return (content_id(prompt_id, *ids), prompt_id, json.dumps(ids), reason)


def _by_prompt(responses: pd.DataFrame):
    """Each prompt's responses in sample order, prompts in id order: (prompt_id, group) pairs."""
    return responses.sort_values(["prompt_id", "sample_index"]).groupby("prompt_id", sort=True)


def queue_everything(responses: pd.DataFrame) -> pd.DataFrame:
    """Judge `human`: every prompt's K responses go to people."""
    rows = [queue_item(prompt_id, list(group["response_id"]), "human") for prompt_id, group in _by_prompt(responses)]
    return pd.DataFrame(rows, columns=QUEUE_COLUMNS)


def queue_each_response(responses: pd.DataFrame) -> pd.DataFrame:
    """human.mode binary: every response an item of its own, for a thumbs up or down on the page."""
    rows = [
        queue_item(prompt_id, [response_id], "binary")
        for prompt_id, group in _by_prompt(responses)
        for response_id in group["response_id"]
    ]
    return pd.DataFrame(rows, columns=QUEUE_COLUMNS)


def every_pair(responses: pd.DataFrame) -> pd.DataFrame:
    """Every pair of each prompt's responses, in prompt then sample order (judge_all's order)."""
    rows = [
        (prompt_id, ids[i], ids[j])
        for prompt_id, group in _by_prompt(responses)
        for ids in [list(group["response_id"])]
        for i, j in all_pairs(len(ids))
    ]
    return pd.DataFrame(rows, columns=["prompt_id", "response_a", "response_b"])


def rank_all(
    judge: Judge, prompts: pd.DataFrame, responses: pd.DataFrame, route_below: float | None = None, **judging
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rankings, queue): judge_all's rankings (`judging`: its batch_prompts, progress, unsafe_words),
    and the pairs whose confidence is below `route_below` (hybrid routing) as items for the human queue."""
    rankings, pairs = judge_all(judge, prompts, responses, **judging)
    if route_below is None:
        return rankings, pd.DataFrame([], columns=QUEUE_COLUMNS)
    return rankings, pair_queue(low_confidence(pairs, route_below))


def judge_all(
    judge: Judge,
    prompts: pd.DataFrame,
    responses: pd.DataFrame,
    batch_prompts: int = 32,
    progress=None,
    unsafe_words: list[str] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rankings, pairs): the judge's rankings, and every pair of each prompt's responses (every_pair)
    with the judge's confidence in its order (`judge_margin`, |2 P - 1|). With `unsafe_words`, each
    response's reasons also say whether it is unsafe (the harmlessness label, independent of its rank)."""
    # The unsafe words label the ranking too: other words are another ranking of the same responses.
    version = f"{judge.version}+unsafe-{config_digest(*unsafe_words)}" if unsafe_words else judge.version
    by_prompt = prompts.set_index("prompt_id")
    conversations = dict(zip(prompts["prompt_id"], chat.conversations_of(prompts)))
    groups = list(_by_prompt(responses))
    rows, margins = [], []
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
            margins += [judgement.confidence(i, j) for i, j in all_pairs(len(group))]
        if progress:
            progress(min(start + batch_prompts, len(groups)), len(groups))
    return pd.DataFrame(rows, columns=RANKING_COLUMNS), every_pair(responses).assign(judge_margin=margins)


def low_confidence(pairs: pd.DataFrame, route_below: float) -> pd.DataFrame:
    """Hybrid routing: the pairs the judge is less sure of than `route_below`, reason low_confidence."""
    return pairs[pairs["judge_margin"] < route_below].assign(reason="low_confidence")


def pair_queue(pairs: pd.DataFrame) -> pd.DataFrame:
    """Queue items of `pairs`, in their order, each with its `reason`."""
    items = pairs[["prompt_id", "response_a", "response_b", "reason"]].values
    rows = [queue_item(prompt_id, [a, b], reason) for prompt_id, a, b, reason in items]
    return pd.DataFrame(rows, columns=QUEUE_COLUMNS)


def pair_uncertainty(pairs: pd.DataFrame, member_scores: dict[str, np.ndarray]) -> pd.Series:
    """BALD of each pair (rlhf.selection) from each response's reward under every ensemble member."""
    a = np.stack([member_scores[r] for r in pairs["response_a"]], axis=1)  # (M, P)
    b = np.stack([member_scores[r] for r in pairs["response_b"]], axis=1)  # (M, P)
    return pd.Series(bald(a - b), index=pairs.index)


def response_member_scores(
    model_dir: str | Path, prompts: pd.DataFrame, responses: pd.DataFrame, device: str | torch.device
) -> dict[str, np.ndarray]:
    """Each response's reward under every member of the reward model in `model_dir`.  id -> (M,)"""
    # Here, not at the top: the rules judge's stage ranks without torch (it spent ~8 s importing it).
    from rlhf.pretrained import load_tokenizer, resolve_device
    from rlhf.reward_models.ensemble import load_reward_model, member_scores

    tokenizer = load_tokenizer(model_dir)
    model = load_reward_model(model_dir, resolve_device(device), tokenizer.pad_token_id).eval()
    conversations = dict(zip(prompts["prompt_id"], chat.conversations_of(prompts)))
    scores = (
        member_scores(model, tokenizer, [conversations[p] for p in responses["prompt_id"]], list(responses["response"]))
        .cpu()
        .numpy()
    )  # (M, N)
    return {response_id: scores[:, i] for i, response_id in enumerate(responses["response_id"])}


def people_queue(
    config: RankResponsesParams,
    prompts: pd.DataFrame,
    responses: pd.DataFrame,
    pairs: pd.DataFrame | None,
    device: str | torch.device,
) -> pd.DataFrame:
    """What people rank this round. Judge human: each prompt's K responses, or with a budget the pairs
    `human.selection` picks; hybrid: the pairs the AI judge is unsure of (`pairs`, from judge_all), or
    with a budget those of them the selection picks; any other judge: nothing."""
    human = config.human
    if config.judge == "human":
        if human.mode == "binary":
            return queue_each_response(responses)
        if human.budget is None:
            return queue_everything(responses)
        return human_queue(human, every_pair(responses), prompts, responses, device)
    if config.judge != "hybrid":
        return pd.DataFrame([], columns=QUEUE_COLUMNS)
    unsure = low_confidence(pairs, config.confidence_threshold)
    if human.budget is None:
        return pair_queue(unsure)
    return human_queue(human, unsure, prompts, responses, device)


def human_queue(
    human: HumanSelectionParams,
    candidates: pd.DataFrame,
    prompts: pd.DataFrame,
    responses: pd.DataFrame,
    device: str | torch.device,
) -> pd.DataFrame:
    """The budgeted queue: `candidates` (pairs, with judge_margin where an AI judge ranked them) scored
    by the reward ensemble's BALD where `human.reward_model` is set, then chosen by `human.selection`.
    Only the candidates' responses are scored, and none where there is no candidate."""
    if human.reward_model and len(candidates):
        asked = responses[responses["response_id"].isin(set(candidates["response_a"]) | set(candidates["response_b"]))]
        scores = response_member_scores(human.reward_model, prompts, asked, device)
        candidates = candidates.assign(uncertainty=pair_uncertainty(candidates, scores))
    return pair_queue(select(candidates, human.budget, human.selection, human.seed, human.per_prompt))


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

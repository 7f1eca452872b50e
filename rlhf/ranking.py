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

PAIR_COLUMNS = ["prompt_id", "response_a", "response_b"]


def ranking_judge(config: RankResponsesParams, device: str | torch.device) -> Judge | None:
    """The judge that ranks every prompt's responses (None for judge human: people rank them all).
    `device` is where a model judge runs (resolved only then)."""
    if config.judge == "human":
        return None
    return make_judge(config, device, config.ai_judge if config.judge == "hybrid" else config.judge)


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
    judge = ranking_judge(config, device)
    rankings, pairs = (
        (None, None)
        if judge is None
        else judge_all(judge, prompts, responses, config.batch_prompts, progress, unsafe_words=config.unsafe_words)
    )
    return finish_ranking(config, judge, prompts, responses, rankings, pairs, device)


def finish_ranking(
    config: RankResponsesParams,
    judge: Judge | None,
    prompts: pd.DataFrame,
    responses: pd.DataFrame,
    rankings: pd.DataFrame | None,
    pairs: pd.DataFrame | None,
    device: str | torch.device,
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(rankings, queue, metrics) once `judge` has ranked everything (judge_all or JudgedBatches)."""
    if judge is None:
        rankings, pairs = pd.DataFrame(columns=RANKING_COLUMNS), None
        report = {"judge": "human", "prompts": 0, "responses": 0}
    else:
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
    return pd.DataFrame(rows, columns=PAIR_COLUMNS)


def rank_all(
    judge: Judge, prompts: pd.DataFrame, responses: pd.DataFrame, route_below: float | None = None, **judging
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rankings, queue): judge_all's rankings (`judging`: its batch_prompts, progress, unsafe_words),
    and the pairs whose confidence is below `route_below` (hybrid routing) as items for the human queue."""
    rankings, pairs = judge_all(judge, prompts, responses, **judging)
    if route_below is None:
        return rankings, pd.DataFrame([], columns=QUEUE_COLUMNS)
    return rankings, pair_queue(low_confidence(pairs, route_below))


class JudgedBatches:
    """Every prompt's K responses under one judge, in batches of `batch_prompts` prompts (prompts in
    id order) that can run in any process: `judge_batch(i)` gives batch i's tables (rankings, its
    pairs with the judge's confidence, and the judge's counters it moved); `combine` joins them.
    With `unsafe_words`, each response's reasons also say whether it is unsafe (the harmlessness
    label, independent of its rank)."""

    def __init__(
        self,
        judge: Judge,
        prompts: pd.DataFrame,
        responses: pd.DataFrame,
        batch_prompts: int = 32,
        unsafe_words: list[str] | None = None,
    ):
        self.judge, self.unsafe_words = judge, unsafe_words
        # The unsafe words label the ranking too: other words are another ranking of the same responses.
        self.version = f"{judge.version}+unsafe-{config_digest(*unsafe_words)}" if unsafe_words else judge.version
        self.by_prompt = prompts.set_index("prompt_id")
        self.conversations = dict(zip(prompts["prompt_id"], chat.conversations_of(prompts)))
        groups = list(_by_prompt(responses))
        self.batches = [groups[start : start + batch_prompts] for start in range(0, len(groups), batch_prompts)]

    def judge_batch(self, index: int) -> dict[str, pd.DataFrame]:
        chunk = self.batches[index]
        items = []
        for prompt_id, group in chunk:
            prompt = self.by_prompt.loc[prompt_id]
            topic = None if pd.isna(prompt["topic"]) else prompt["topic"]
            items.append((self.conversations[prompt_id], topic, list(group["response"])))
        before = judge_counters(self.judge)
        judgements = self.judge.rank_batch(items)
        after = judge_counters(self.judge)
        rows, margins = [], []
        for (prompt_id, group), judgement in zip(chunk, judgements):
            # The same judge over the same responses is the same ranking: re-runs add nothing.
            ranking_id = content_id(prompt_id, self.judge.name, self.version, *sorted(group["response_id"]))
            for response_id, text, rank, score, reasons in zip(
                group["response_id"], group["response"], judgement.ranks, judgement.scores, judgement.reasons
            ):
                if self.unsafe_words:
                    reasons = {**reasons, "unsafe": is_unsafe(text, self.unsafe_words)}
                reasons_json = json.dumps(reasons, sort_keys=True)
                rows.append(
                    (ranking_id, response_id, prompt_id, rank, score, reasons_json, self.judge.name, self.version)
                )
            margins += [judgement.confidence(i, j) for i, j in all_pairs(len(group))]
        responses = pd.concat([group for _, group in chunk])
        return {
            "rankings": pd.DataFrame(rows, columns=RANKING_COLUMNS),
            "pairs": every_pair(responses).assign(judge_margin=margins),
            "judge_counters": pd.DataFrame([{"batches": 1, **{name: after[name] - before[name] for name in after}}]),
        }

    def combine(self, tables: dict[str, pd.DataFrame]) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(rankings, pairs) of every batch; the judge's counters become the batches' totals, wherever they ran."""
        if not tables:
            return pd.DataFrame(columns=RANKING_COLUMNS), pd.DataFrame(columns=[*PAIR_COLUMNS, "judge_margin"])
        set_judge_counters(self.judge, {name: int(total) for name, total in tables["judge_counters"].sum().items()})
        return tables["rankings"], tables["pairs"]


def judge_counters(judge: Judge) -> dict[str, int]:
    """What a judge counts as it works: pairs judged and position-biased ones (pairwise judges),
    requests and tokens (endpoint judges)."""
    counters = {}
    if (stats := getattr(judge, "stats", None)) is not None:
        counters.update(pairs=stats.pairs, position_biased=stats.position_biased)
    if (usage := getattr(judge, "usage", None)) is not None:
        counters.update({f"usage.{name}": value for name, value in usage.items()})
    return counters


def set_judge_counters(judge: Judge, counters: dict[str, int]) -> None:
    if (stats := getattr(judge, "stats", None)) is not None:
        stats.pairs, stats.position_biased = counters.get("pairs", 0), counters.get("position_biased", 0)
    if (usage := getattr(judge, "usage", None)) is not None:
        for name in usage:
            usage[name] = counters.get(f"usage.{name}", 0)


def judge_all(
    judge: Judge,
    prompts: pd.DataFrame,
    responses: pd.DataFrame,
    batch_prompts: int = 32,
    progress=None,
    unsafe_words: list[str] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rankings, pairs): the judge's rankings, and every pair of each prompt's responses (every_pair)
    with the judge's confidence in its order (`judge_margin`, |2 P - 1|), every batch in this process."""
    batches = JudgedBatches(judge, prompts, responses, batch_prompts, unsafe_words)
    done = []
    for index in range(len(batches.batches)):
        done.append(batches.judge_batch(index))
        if progress:
            progress(index + 1, len(batches.batches))
    tables = {name: pd.concat([batch[name] for batch in done], ignore_index=True) for name in done[0]} if done else {}
    return batches.combine(tables)


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

"""Active selection (rlhf.selection): on hand-built ensembles, the budget goes to the pairs it should.

BALD on members' reward margins set by hand; each policy's order; the per-prompt spread; the reason
each item carries; and the rank_responses queue with a saved two-member ensemble whose second member
is the first with its head negated, so the members disagree most where the first is most sure.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import GPT2ForSequenceClassification

from rlhf.config import RankResponsesParams
from rlhf.judges import make_judge
from rlhf.judges.reward_model import RewardModelJudge
from rlhf.pretrained import load_tokenizer
from rlhf.ranking import judge_all, people_queue, rank_all
from rlhf.reward_models.ensemble import load_reward_model, save_reward_models
from rlhf.scoring import score_exchanges
from rlhf.selection import bald, select
from tests.support.tiny import tiny_gpt2_config

pytestmark = pytest.mark.timeout(120)


def test_bald_is_high_where_sure_members_disagree_and_low_where_all_guess():
    margins = np.array([[4.0, 0.0, 4.0, 1.0], [-4.0, 0.0, 4.0, -1.0]])  # (M=2, P=4)
    scores = bald(margins)
    assert scores[0] > scores[3] > scores[1] == pytest.approx(0.0, abs=1e-9)
    assert scores[2] == pytest.approx(0.0, abs=1e-9)  # agreement, however sure, teaches nothing
    sure = 1 / (1 + np.exp(-4.0))
    assert scores[0] == pytest.approx(np.log(2) + sure * np.log(sure) + (1 - sure) * np.log(1 - sure))  # H(.5) - H(p)
    one_model = bald(np.array([[0.0, 3.0]]))  # one member: predictive entropy
    assert one_model[0] == pytest.approx(np.log(2)) and one_model[1] < 0.2


def candidates() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "prompt_id": ["p1", "p1", "p1", "p2", "p3"],
            "response_a": ["a", "b", "c", "d", "e"],
            "response_b": ["z", "y", "x", "w", "v"],
            "uncertainty": [0.60, 0.55, 0.50, 0.20, 0.10],
            "judge_margin": [0.90, 0.05, 0.50, 0.10, 0.70],
        }
    )


def test_uncertainty_takes_the_most_uncertain_pair_of_each_prompt_before_a_second():
    chosen = select(candidates(), budget=4, selection="uncertainty")
    assert list(chosen["response_a"]) == ["a", "d", "e", "b"]  # p1's best, p2, p3, then p1's next
    assert list(chosen["reason"])[0] == "uncertainty: bald 0.6000, rank 1 of 5"
    assert list(select(candidates(), budget=2, selection="uncertainty", per_prompt=2)["response_a"]) == ["a", "b"]


def test_judge_margin_takes_the_closest_calls_and_mix_fuses_both_ranks():
    assert list(select(candidates(), budget=3, selection="judge_margin")["response_a"]) == ["b", "d", "e"]
    mixed = select(candidates(), budget=5, selection="mix", per_prompt=5)
    assert mixed["response_a"].iloc[0] == "b"  # second on uncertainty, first on margin: the best mean rank
    assert all(reason.startswith("mix: mixed_rank") for reason in mixed["reason"])


def test_random_is_seeded_and_a_budget_above_the_candidates_takes_them_all():
    first, again = (select(candidates(), 3, "random", seed=7) for _ in range(2))
    assert list(first["response_a"]) == list(again["response_a"])
    assert len(select(candidates(), 50, "random")) == 5
    assert select(candidates().iloc[:0], 3, "uncertainty").empty


@pytest.fixture(scope="module")
def disagreeing_ensemble(tmp_path_factory, tiny_tokenizer):
    """Two tiny reward models: member 1 is member 0 with its score head negated."""
    torch.manual_seed(0)
    first = GPT2ForSequenceClassification(tiny_gpt2_config(tiny_tokenizer, num_labels=1)).eval()
    second = GPT2ForSequenceClassification(tiny_gpt2_config(tiny_tokenizer, num_labels=1)).eval()
    second.load_state_dict(first.state_dict())
    with torch.no_grad():
        second.score.weight.neg_()
    out = tmp_path_factory.mktemp("ensemble") / "reward"
    save_reward_models([first, second], tiny_tokenizer, out)
    return out


def demo_frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    prompts = pd.DataFrame(
        {
            "prompt_id": ["p1", "p2", "p3"],
            "prompt": ["tell me about bees", "cats?", "and tea"],
            "topic": ["bees", "cats", "tea"],
        }
    )
    texts = [
        "bees make honey",
        "bees sting",
        "i dunno",
        "cats purr you should pet them",
        "whatever",
        "thanks, glad to help with cats",
        "tea is brewed hot",
        "tea tea tea",
        "happy to help: steep it",
    ]
    responses = pd.DataFrame(
        {
            "prompt_id": [p for p in ("p1", "p2", "p3") for _ in range(3)],
            "response_id": [f"r{i}" for i in range(9)],
            "response": texts,
            "sample_index": [0, 1, 2] * 3,
        }
    )
    return prompts, responses


def test_the_human_queue_spends_its_budget_where_the_ensemble_disagrees_most(disagreeing_ensemble):
    prompts, responses = demo_frames()
    config = RankResponsesParams(judge="human", human={"budget": 3, "reward_model": str(disagreeing_ensemble)})
    queue = people_queue(config, prompts, responses, None, "cpu")
    # Expected by hand: the members' margins are +-m, so BALD grows with |m| under member 0 alone.
    tokenizer = load_tokenizer(disagreeing_ensemble)
    member0 = load_reward_model(disagreeing_ensemble, torch.device("cpu"), tokenizer.pad_token_id).members[0]
    reward = dict(
        zip(
            responses["response_id"],
            score_exchanges(
                member0,
                tokenizer,
                [
                    [{"role": "user", "content": prompts.set_index("prompt_id").loc[p, "prompt"]}]
                    for p in responses["prompt_id"]
                ],
                list(responses["response"]),
            ).tolist(),
        )
    )
    best = {}
    for prompt_id, group in responses.groupby("prompt_id"):
        ids = list(group["response_id"])
        pairs = [(abs(reward[a] - reward[b]), sorted([a, b])) for i, a in enumerate(ids) for b in ids[i + 1 :]]
        best[prompt_id] = max(pairs)[1]
    assert len(queue) == 3 and set(queue["prompt_id"]) == {"p1", "p2", "p3"}  # one per prompt
    assert {p: json.loads(r) for p, r in zip(queue["prompt_id"], queue["response_ids"])} == best
    assert all(reason.startswith("uncertainty: bald ") for reason in queue["reason"])


def test_without_a_budget_the_queues_are_those_before_budgets(disagreeing_ensemble):
    prompts, responses = demo_frames()
    everything = people_queue(RankResponsesParams(judge="human"), prompts, responses, None, "cpu")
    assert len(everything) == 3 and set(everything["reason"]) == {"human"}
    # A reward-model judge (member 0): its Bradley-Terry preferences make every margin below 1.
    tokenizer = load_tokenizer(disagreeing_ensemble)
    member0 = load_reward_model(disagreeing_ensemble, torch.device("cpu"), tokenizer.pad_token_id).members[0]
    judge = RewardModelJudge(member0, tokenizer, "member-0")
    hybrid = RankResponsesParams(judge="hybrid", ai_judge="rules", confidence_threshold=1.0)
    _, pairs = judge_all(judge, prompts, responses)
    unsure = people_queue(hybrid, prompts, responses, pairs, "cpu")
    assert set(unsure["reason"]) <= {"low_confidence"} and len(unsure) == int((pairs["judge_margin"] < 1.0).sum())
    assert len(unsure) == 9 and unsure.equals(rank_all(judge, prompts, responses, route_below=1.0)[1])
    budgeted = people_queue(
        hybrid.model_copy(update={"human": hybrid.human.model_copy(update={"budget": 2, "selection": "random"})}),
        prompts,
        responses,
        pairs,
        "cpu",
    )
    assert len(budgeted) == min(2, len(unsure))


def test_a_budget_with_no_unsure_pair_queues_nothing(disagreeing_ensemble):
    prompts, responses = demo_frames()
    sure = RankResponsesParams(
        judge="hybrid",
        ai_judge="rules",
        confidence_threshold=1.0,
        human={"budget": 2, "reward_model": str(disagreeing_ensemble)},
    )
    _, pairs = judge_all(make_judge(sure, "cpu", "rules"), prompts, responses)  # the rules are always sure
    assert people_queue(sure, prompts, responses, pairs, "cpu").empty


def test_a_selection_without_its_signal_is_refused():
    with pytest.raises(ValueError, match="human.reward_model: required"):
        RankResponsesParams(judge="human", human={"budget": 5})
    with pytest.raises(ValueError, match="judge_margin needs judge 'hybrid'"):
        RankResponsesParams(judge="human", human={"budget": 5, "selection": "judge_margin"})


def test_binary_mode_asks_about_each_response_alone():
    """human.mode binary: one queue item per response, for the page's thumbs up or down."""
    prompts, responses = demo_frames()
    binary = RankResponsesParams(judge="human", human={"mode": "binary"})
    queue = people_queue(binary, prompts, responses, None, "cpu")
    assert sorted(json.loads(ids)[0] for ids in queue["response_ids"]) == sorted(responses["response_id"])
    assert all(len(json.loads(ids)) == 1 for ids in queue["response_ids"]) and set(queue["reason"]) == {"binary"}
    assert queue["item_id"].is_unique
    with pytest.raises(ValueError, match="human.mode: binary needs judge 'human'"):
        RankResponsesParams(judge="hybrid", ai_judge="rules", human={"mode": "binary"})

"""Agreement between judges, from labels in a real DuckDB store."""

import json

import pandas as pd
import pytest

from rlhf.agreement import agreement_report, cohen_kappa
from rlhf.cli import main
from rlhf.ranking import RANKING_COLUMNS, queue_item
from rlhf.store import FeedbackStore


def test_cohen_kappa_matches_hand_computation():
    # 10 items: agree on 7 (4 yes-yes, 3 no-no). Rater 1 says yes 6 times, rater 2 yes 5 times.
    first = [1, 1, 1, 1, 1, 1, 0, 0, 0, 0]
    second = [1, 1, 1, 1, 0, 0, 1, 0, 0, 0]
    observed, expected = 0.7, (6 * 5 + 4 * 5) / 100
    assert cohen_kappa(first, second) == pytest.approx((observed - expected) / (1 - expected))
    assert cohen_kappa([1, -1, 0], [1, -1, 0]) == 1.0


def test_agreement_from_the_store_ai_vs_people_and_people_vs_people(tmp_path):
    store = FeedbackStore(tmp_path / "feedback.duckdb")
    prompts = pd.DataFrame(
        [("p", "q", None, "train", "t")], columns=["prompt_id", "prompt", "topic", "split", "source"]
    )
    ids = ["r0", "r1", "r2"]
    responses = pd.DataFrame({"response_id": ids, "prompt_id": "p", "sample_index": range(3),
                              "response": ["x", "y", "z"], "policy_checkpoint": "c", "sampling": "{}"})  # fmt: skip
    ai = pd.DataFrame(
        [("ai-rank", rid, "p", rank, -rank, "{}", "llm", "1") for rid, rank in zip(ids, [1, 2, 3])],
        columns=RANKING_COLUMNS,
    )
    queue = pd.DataFrame([queue_item("p", ids, "human")], columns=["item_id", "prompt_id", "response_ids", "reason"])
    store.ingest({"run_id": "run", "stage": "t"}, prompts, responses, ai, queue)
    item = queue["item_id"][0]
    store.record_human_ranking("alice", item, {"r0": 1, "r1": 2, "r2": 3}, [], "a")  # agrees on all 3 pairs
    store.record_human_ranking("bob", item, {"r0": 2, "r1": 1, "r2": 3}, [], "b")  # flips r0/r1

    report = agreement_report(store.pair_labels())
    llm = report["ai_vs_human"]["llm"]
    assert llm["pairs"] == 6 and llm["accuracy"] == pytest.approx(5 / 6, abs=1e-4)
    assert report["inter_annotator"]["pairs"] == 3
    assert report["inter_annotator"]["accuracy"] == pytest.approx(2 / 3, abs=1e-4)
    assert report["inter_annotator"]["kappa"] == pytest.approx(round(cohen_kappa([1, 1, 1], [-1, 1, 1]), 4))


def test_agreement_cli(tmp_path, capsys):
    store = FeedbackStore(tmp_path / "feedback.duckdb")
    store.counts()  # creates an empty store
    assert main(["store", "--path", str(store.path), "agreement"]) == 0
    assert "no pair has been labelled" in capsys.readouterr().out
    assert json.dumps(agreement_report(store.pair_labels())) == '{"ai_vs_human": {}, "inter_annotator": null}'

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
    responses = pd.DataFrame(
        {
            "response_id": ids,
            "prompt_id": "p",
            "sample_index": range(3),
            "response": ["x", "y", "z"],
            "policy_checkpoint": "c",
            "sampling": "{}",
        }
    )
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
    report = agreement_report(store.pair_labels(), store.human_ranks())
    assert report["annotators"] == {} and report["low_agreement"]["annotators"] == []


# --- a small table, by hand: two people rank two items of three responses (r0 < r1 < r2 by id) ---
#
#            item 1 (a0 a1 a2)   item 2 (b0 b1 b2)
#   alice        1  2  3             3  2  1
#   bob          2  1  3             3  2  1
#
# Krippendorff's alpha, ordinal: six units, each with two values. The coincidence matrix (each unit's
# ordered value pairs, weight 1 / (m_u - 1) = 1) is o_11 = 2, o_12 = o_21 = 2, o_22 = 2, o_33 = 4;
# n_1 = n_2 = n_3 = 4, n = 12. Ordinal distances delta^2(c, k) = (sum_{g=c..k} n_g - (n_c + n_k) / 2)^2:
# delta^2(1,2) = delta^2(2,3) = (8 - 4)^2 = 16, delta^2(1,3) = (12 - 4)^2 = 64.
# alpha = 1 - (n - 1) sum o_ck delta^2_ck / sum n_c n_k delta^2_ck
#       = 1 - 11 * (2*16 + 2*16) / (2 * 16 * (16 + 64 + 16)) = 1 - 704 / 3072 = 37/48 = 0.7708.
# Cohen's kappa over the six pairs (label +1: the smaller id is better): alice +1 +1 +1 -1 -1 -1,
# bob -1 +1 +1 -1 -1 -1. p_o = 5/6; alice has three +1s and three -1s, bob two and four:
# p_e = (3*2 + 3*4) / 36 = 1/2; kappa = (5/6 - 1/2) / (1 - 1/2) = 2/3.
HAND_TABLE = {"alice": {"a": [1, 2, 3], "b": [3, 2, 1]}, "bob": {"a": [2, 1, 3], "b": [3, 2, 1]}}
ALPHA, KAPPA = 37 / 48, 2 / 3


def store_with_people(tmp_path, table: dict, ai_ranks: dict | None = None) -> FeedbackStore:
    """A real store where each person of `table` ranked each item ({person: {item: ranks}}) on the page."""
    store = FeedbackStore(tmp_path / "feedback.duckdb")
    items = sorted({item for ranks in table.values() for item in ranks})
    prompts = pd.DataFrame(
        [(p, f"prompt {p}", None, "train", "t") for p in items],
        columns=["prompt_id", "prompt", "topic", "split", "source"],
    )
    responses = pd.DataFrame(
        [(f"{p}{i}", p, i, f"text {p}{i}", "c", "{}") for p in items for i in range(3)],
        columns=["response_id", "prompt_id", "sample_index", "response", "policy_checkpoint", "sampling"],
    )
    ai = pd.DataFrame(
        [
            (f"ai-{p}", f"{p}{i}", p, rank, -rank, "{}", "rules", "1")
            for p, ranks in (ai_ranks or {}).items()
            for i, rank in enumerate(ranks)
        ],
        columns=RANKING_COLUMNS,
    )
    queue = pd.DataFrame(
        [queue_item(p, [f"{p}{i}" for i in range(3)], "human") for p in items],
        columns=["item_id", "prompt_id", "response_ids", "reason"],
    )
    store.ingest({"run_id": "run", "stage": "t"}, prompts, responses, ai, queue)
    item_ids = dict(zip(queue["prompt_id"], queue["item_id"]))
    for person, ranked in table.items():
        for p, ranks in ranked.items():
            store.record_human_ranking(person, item_ids[p], {f"{p}{i}": r for i, r in enumerate(ranks)}, [], person)
    return store


def test_alpha_and_kappa_match_the_hand_computed_table(tmp_path):
    store = store_with_people(tmp_path, HAND_TABLE)
    report = agreement_report(store.pair_labels(), store.human_ranks())
    shared = report["inter_annotator"]
    assert shared["pairs"] == 6 and shared["items"] == 2
    assert shared["kappa"] == pytest.approx(KAPPA, abs=1e-4)
    assert shared["accuracy"] == pytest.approx(5 / 6, abs=1e-4)
    assert shared["krippendorff_alpha"] == pytest.approx(ALPHA, abs=1e-4)
    # With two people the consensus of each is the other: both see the pairwise kappa.
    assert report["annotators"]["alice"]["consensus"]["kappa"] == pytest.approx(KAPPA, abs=1e-4)
    assert report["annotators"]["bob"]["consensus"]["kappa"] == pytest.approx(KAPPA, abs=1e-4)


def test_alpha_leaves_out_items_that_only_one_person_ranked(tmp_path):
    # carol alone ranks a third item, against everyone's grain: it must not move alpha.
    table = {**HAND_TABLE, "carol": {"c": [3, 1, 2]}}
    store = store_with_people(tmp_path, table)
    assert agreement_report(store.pair_labels(), store.human_ranks())["inter_annotator"]["krippendorff_alpha"] == (
        pytest.approx(ALPHA, abs=1e-4)
    )


def test_each_annotator_against_the_consensus_and_the_ai_judge_and_the_low_ones_named(tmp_path, capsys):
    # alice and bob agree with each other and with the AI judge; carol reverses every item.
    table = {
        "alice": {"a": [1, 2, 3], "b": [3, 2, 1], "c": [2, 1, 3]},
        "bob": {"a": [1, 2, 3], "b": [3, 2, 1], "c": [2, 1, 3]},
        "carol": {"a": [3, 2, 1], "b": [1, 2, 3], "c": [2, 3, 1]},
    }
    store = store_with_people(tmp_path, table, ai_ranks={"a": [1, 2, 3], "b": [3, 2, 1], "c": [2, 1, 3]})
    report = agreement_report(store.pair_labels(), store.human_ranks())
    people = report["annotators"]
    assert people["alice"]["pairs"] == 9
    # alice's consensus is the majority of bob and carol: they split on every pair, so no pair counts...
    assert people["alice"]["consensus"] is None
    # ...while carol's consensus is alice and bob, with whom she disagrees on all nine pairs: their
    # labels are five +1 and four -1, hers four +1 and five -1, so p_o = 0, p_e = (5*4 + 4*5) / 81 = 40/81
    # and kappa = -(40/81) / (41/81) = -40/41.
    assert people["carol"]["consensus"] == {"pairs": 9, "accuracy": 0.0, "kappa": pytest.approx(-40 / 41, abs=1e-4)}
    assert people["alice"]["ai"]["rules"] == {"pairs": 9, "accuracy": 1.0, "kappa": 1.0}
    assert people["carol"]["ai"]["rules"]["accuracy"] == 0.0
    assert report["low_agreement"]["annotators"] == ["carol"]

    assert main(["store", "--store", str(store.path), "agreement"]) == 0
    printed = capsys.readouterr().out
    assert "Krippendorff's alpha" in printed
    assert "low agreement (kappa with the consensus under 0.2): carol" in printed
    assert main(["store", "--path", str(store.path), "agreement", "--low-kappa", "-1"]) == 0
    assert "low agreement" not in capsys.readouterr().out


def test_the_snapshot_merges_several_peoples_rankings_of_one_item_by_weight(tmp_path):
    from rlhf.snapshot import read_comparisons

    store = store_with_people(tmp_path, HAND_TABLE, ai_ranks={"a": [1, 2, 3]})
    store.snapshot_comparisons(tmp_path / "snapshot")
    pairs = read_comparisons(tmp_path / "snapshot")
    human = pairs[pairs["judge"] == "human"]
    # Two people ranked each item: each of their 3 pairs weighs 1 / (2 * 3), so each item sums to 1.
    assert human["weight"].tolist() == pytest.approx([1 / 6] * 12)
    assert human.groupby("prompt_id")["weight"].sum().tolist() == pytest.approx([1.0, 1.0])
    # The disagreement on item a stays in, both orders, each at its share; each pair keeps its annotator.
    a01 = human[(human["prompt_id"] == "a") & (human[["chosen_id", "rejected_id"]].isin(["a0", "a1"]).all(axis=1))]
    assert sorted(zip(a01["chosen_id"], a01["judge_version"])) == [("a0", "alice"), ("a1", "bob")]
    assert pairs.loc[pairs["judge"] == "rules", "weight"].tolist() == pytest.approx([1 / 3] * 3)  # AI: unchanged

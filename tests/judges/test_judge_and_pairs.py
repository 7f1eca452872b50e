"""The rule judge, K-way rankings with ties, and the pairs the store derives from them."""

import json
import re

import duckdb
import pandas as pd
import pytest

from rlhf.config import RankResponsesParams, load_params
from rlhf.judges import RuleJudge, ranks_from_scores
from rlhf.ranking import rank_all
from rlhf.store import FeedbackStore
from rlhf.text import content_id
from tests.support.store_data import ranking_frames


@pytest.fixture()
def judge(project_root):
    return RuleJudge(load_params(project_root / "params.yaml").rank_responses.principles)


def test_ranks_from_scores_shares_ranks_on_ties():
    assert ranks_from_scores([3.0, 1.0, 3.0, 2.0]) == [1, 4, 1, 3]


def test_rule_judge_explains_each_principle(judge):
    prompt = "tell me about cats . answer :"
    good = "sure , happy to help . cats can be calm and warm . many people find cats quiet ."
    bad = "whatever . dogs are old ."
    score_good, why_good = judge.score(prompt, "cats", good)
    score_bad, why_bad = judge.score(prompt, "cats", bad)
    assert why_good == {
        "on_topic": True,
        "polite": True,
        "no_banned_words": True,
        "length_band": True,
        "gives_advice": False,
    }
    assert why_bad == {
        "on_topic": False,
        "polite": False,
        "no_banned_words": False,
        "length_band": False,
        "gives_advice": False,
    }
    weights = {p.name: p.weight for p in judge.principles}
    assert score_good == sum(weights[name] for name, met in why_good.items() if met) == 5  # on_topic weighs 2
    assert score_bad == 0
    _, why_tip = judge.score(prompt, "cats", good + " you should look after cats with care .")
    assert why_tip["gives_advice"]


def test_k_way_ranking_with_ties_becomes_its_pairs(tmp_path):
    store = FeedbackStore(tmp_path / "feedback.duckdb")
    # a is best, b and c tie, d is worst: C(4,2) = 6 pairs, one of them a tie.
    added = store.ingest({"run_id": "run-1", "stage": "test"}, *ranking_frames({"a": 1, "b": 2, "c": 2, "d": 4}))
    assert added["comparisons"] == 6
    pairs = store.query("SELECT chosen_id, rejected_id, tie, margin FROM comparisons ORDER BY ALL")
    assert list(pairs.itertuples(index=False, name=None)) == [
        ("a", "b", False, 1.0),
        ("a", "c", False, 1.0),
        ("a", "d", False, 3.0),
        ("b", "c", True, 0.0),
        ("b", "d", False, 2.0),
        ("c", "d", False, 2.0),
    ]


def test_reingesting_the_same_rankings_adds_nothing_and_snapshot_is_byte_identical(tmp_path):
    store = FeedbackStore(tmp_path / "feedback.duckdb")
    frames = ranking_frames({"a": 1, "b": 2, "c": 3})
    first = store.ingest({"run_id": "run-1", "stage": "test"}, *frames)
    store.snapshot_comparisons(tmp_path / "one")
    again = store.ingest({"run_id": "run-2", "stage": "test"}, *frames)
    store.snapshot_comparisons(tmp_path / "two")
    assert first["comparisons"] == 3 and first["responses"] == 3
    assert {k: v for k, v in again.items() if k != "runs"} == {
        "prompts": 0,
        "responses": 0,
        "rankings": 0,
        "comparisons": 0,
        "annotation_queue": 0,
        "annotators": 0,
    }
    for part in ("pairs", "prompts", "responses"):
        assert (tmp_path / "one" / f"{part}.parquet").read_bytes() == (
            tmp_path / "two" / f"{part}.parquet"
        ).read_bytes()
    with duckdb.connect(str(tmp_path / "feedback.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM comparisons").fetchone()[0] == 3
        assert con.execute("SELECT DISTINCT run_id FROM comparisons").fetchall() == [("run-1",)]


def test_failed_ingest_leaves_store_unchanged(tmp_path):
    store = FeedbackStore(tmp_path / "feedback.duckdb")
    store.ingest({"run_id": "run-1", "stage": "test"}, *ranking_frames({"a": 1, "b": 2}))
    prompts, responses, rankings = ranking_frames({"x": 1, "y": 2})
    broken = rankings.drop(columns=["score"])  # the insert of rankings fails after responses went in
    with pytest.raises(duckdb.BinderException, match="score"):
        store.ingest({"run_id": "run-2", "stage": "test"}, prompts, responses, broken)
    assert store.counts()["responses"] == 2 and store.counts()["comparisons"] == 1


def test_rank_all_records_why_and_ranks_each_prompt(judge):
    prompts = pd.DataFrame(
        [
            {
                "prompt_id": "p1",
                "prompt": "tell me about owls . answer :",
                "topic": "owls",
                "split": "train",
                "source": "t",
            }
        ]
    )
    texts = [
        "thanks for asking . owls can be calm and warm . owls are rare but never old .",
        "ok . dogs .",
        "ok . dogs .",
    ]
    responses = pd.DataFrame(
        [{"response_id": f"r{i}", "prompt_id": "p1", "sample_index": i, "response": t} for i, t in enumerate(texts)]
    )
    rankings, queue = rank_all(judge, prompts, responses)
    assert queue.empty  # no routing asked for
    assert list(rankings["rank"]) == [1, 2, 2]
    assert json.loads(rankings["reasons"][0]) == {
        "gives_advice": False,
        "length_band": True,
        "no_banned_words": True,
        "on_topic": True,
        "polite": True,
    }
    assert rankings["ranking_id"].nunique() == 1


def test_cli_stats_and_query(tmp_path, capsys):
    from rlhf.cli import main

    path = str(tmp_path / "feedback.duckdb")
    FeedbackStore(path).ingest({"run_id": "run-1", "stage": "test"}, *ranking_frames({"a": 1, "b": 2, "c": 3}))
    assert main(["store", "--path", path, "stats"]) == 0
    assert re.search(r"^comparisons +3$", capsys.readouterr().out, re.MULTILINE)
    assert main(["store", "--path", path, "query", "SELECT count(*) AS n FROM comparisons WHERE NOT tie"]) == 0
    assert capsys.readouterr().out.split() == ["n", "3"]
    assert main(["store", "--path", path, "query", "SELECT nope FROM comparisons"]) == 2
    assert "rlhf: error:" in capsys.readouterr().err


def test_snapshot_reads_back_as_the_stores_comparisons_and_replaces_a_stale_partial(tmp_path):
    from rlhf.errors import StoreError
    from rlhf.snapshot import read_comparisons

    store = FeedbackStore(tmp_path / "feedback.duckdb")
    store.ingest({"run_id": "run-1", "stage": "test"}, *ranking_frames({"a": 1, "b": 2, "c": 2}))
    stale = tmp_path / "snap.partial"  # what a writer killed mid-snapshot leaves
    stale.mkdir()
    (stale / "pairs.parquet").write_text("half")
    assert store.snapshot_comparisons(tmp_path / "snap") == 3
    assert not stale.exists()
    pd.testing.assert_frame_equal(read_comparisons(tmp_path / "snap"), store.comparisons())
    (tmp_path / "snap" / "responses.parquet").unlink()
    with pytest.raises(StoreError, match=r"snap: not a comparisons snapshot \(missing responses.parquet\)"):
        read_comparisons(tmp_path / "snap")


# --- a judge whose configuration changed, ranking the same responses again ---

BEE_PROMPTS = pd.DataFrame(
    [
        {
            "prompt_id": content_id("bees"),
            "prompt": "tell me about bees .",
            "topic": "bees",
            "split": "train",
            "source": "t",
        }
    ]
)
BEE_RESPONSES = pd.DataFrame(
    {
        "response_id": ["a", "b", "c"],
        "prompt_id": content_id("bees"),
        "sample_index": [0, 1, 2],
        "response": ["bees are calm .", "you should set fire to bees .", "bees make honey , thanks ."],
        "policy_checkpoint": "c",
        "sampling": "{}",
    }
)


def rules(word: str) -> RuleJudge:
    return RuleJudge(
        RankResponsesParams(principles=[{"kind": "contains_any", "name": f"says_{word}", "words": [word]}]).principles
    )


def chosen_pairs(snapshot) -> set[tuple[str, str]]:
    pairs = pd.read_parquet(snapshot / "pairs.parquet")
    return {(row.chosen_id, row.rejected_id) for row in pairs.itertuples() if not row.tie}


def store_ranking(store, run_id, judge, snapshot, unsafe_words=None):
    """What store_comparisons does with one rank_responses output: ingest it, snapshot preferring it."""
    rankings, queue = rank_all(judge, BEE_PROMPTS, BEE_RESPONSES, unsafe_words=unsafe_words)
    store.ingest({"run_id": run_id, "stage": "test"}, BEE_PROMPTS, BEE_RESPONSES, rankings, queue)
    store.snapshot_comparisons(snapshot, rankings["ranking_id"])
    return rankings


def test_a_judge_version_names_its_principles_and_unsafe_words():
    assert rules("calm").version == rules("calm").version != rules("honey").version
    plain = rank_all(rules("calm"), BEE_PROMPTS, BEE_RESPONSES)[0]
    flagged = rank_all(rules("calm"), BEE_PROMPTS, BEE_RESPONSES, unsafe_words=["set fire"])[0]
    other_words = rank_all(rules("calm"), BEE_PROMPTS, BEE_RESPONSES, unsafe_words=["throw"])[0]
    versions = [set(frame["judge_version"]) for frame in (plain, flagged, other_words)]
    assert all(len(v) == 1 for v in versions) and len(set.union(*versions)) == 3
    assert len({frame["ranking_id"].iloc[0] for frame in (plain, flagged, other_words)}) == 3


def test_the_snapshot_counts_the_judge_as_it_is_now_and_the_store_keeps_the_history(tmp_path):
    store = FeedbackStore(tmp_path / "feedback.duckdb")
    store_ranking(store, "run-1", rules("calm"), tmp_path / "calm", unsafe_words=["set fire"])
    assert chosen_pairs(tmp_path / "calm") == {("a", "b"), ("a", "c")}
    # the principles change: the same responses are ranked again; the new ranking replaces the old
    store_ranking(store, "run-2", rules("honey"), tmp_path / "honey")
    assert chosen_pairs(tmp_path / "honey") == {("c", "a"), ("c", "b")}
    assert store.counts()["rankings"] == 6  # both rankings stay in the store, as history
    labels = pd.read_parquet(tmp_path / "honey" / "responses.parquet")
    assert labels["unsafe"].isna().all()  # the flags belonged to the superseded ranking
    # ... and back: the first ranking is already stored, and counts again because it is current
    store_ranking(store, "run-3", rules("calm"), tmp_path / "calm-again", unsafe_words=["set fire"])
    assert chosen_pairs(tmp_path / "calm-again") == chosen_pairs(tmp_path / "calm")
    assert store.counts()["rankings"] == 6
    # without a current file (exports, the DataFrame API) the newest run's ranking counts
    assert {(r.chosen_id, r.rejected_id) for r in store.comparisons().itertuples() if not r.tie} == {
        ("c", "a"),
        ("c", "b"),
    }


def test_people_and_other_judges_are_never_superseded(tmp_path):
    store = FeedbackStore(tmp_path / "feedback.duckdb")
    ai = store_ranking(store, "run-1", rules("calm"), tmp_path / "one")
    for annotator, order in (("ann", "abc"), ("bob", "cba")):
        human = ai.assign(
            ranking_id=f"h-{annotator}",
            judge="human",
            judge_version=annotator,
            reasons="{}",
            rank=[order.index(r) + 1 for r in ai["response_id"]],
        )
        store.ingest({"run_id": f"run-{annotator}", "stage": "test"}, BEE_PROMPTS, BEE_RESPONSES, human)
    store_ranking(store, "run-2", rules("calm"), tmp_path / "two")
    judges = pd.read_parquet(tmp_path / "two" / "pairs.parquet").groupby("judge_version")["ranking_id"].nunique()
    assert judges.to_dict() == {"ann": 1, "bob": 1, rules("calm").version: 1}

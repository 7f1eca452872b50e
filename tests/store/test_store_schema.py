"""The store's schema: versioned, migrated forward in place, weights per ranking, provenance."""

import duckdb
import pandas as pd
import pytest

from rlhf.errors import StoreError
from rlhf.store import MIGRATIONS, SCHEMA_V1, SCHEMA_VERSION, FeedbackStore


def version_one_store(path):
    """A store as the first release wrote it, with one ranking of three responses (3 pairs)."""
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    con.execute(SCHEMA_V1)
    con.execute("INSERT INTO schema_version VALUES (1)")
    con.execute("INSERT INTO runs VALUES ('run-1', 'store_comparisons', 'abc', now())")
    con.execute("INSERT INTO prompts VALUES ('p', 'q', NULL, 'train', 'demo', 'run-1')")
    for i in range(3):
        con.execute(f"INSERT INTO responses VALUES ('r{i}', 'p', {i}, 'text {i}', 'ckpt', '{{}}', 'run-1')")
        con.execute(f"INSERT INTO rankings VALUES ('k', 'r{i}', 'p', {i + 1}, {-i}, '{{}}', 'rules', '1', 'run-1')")
    for a, b in [(0, 1), (0, 2), (1, 2)]:
        con.execute(f"INSERT INTO comparisons VALUES ('k', 'r{a}', 'r{b}', 'p', {b - a}, false, 'run-1')")
    con.close()


def test_a_version_one_store_migrates_forward_keeping_every_row(tmp_path):
    path = tmp_path / "feedback.duckdb"
    version_one_store(path)
    store = FeedbackStore(path)
    counts = store.counts()
    assert store.schema_version() == SCHEMA_VERSION == 7  # binary_labels (6), exchanges (7)
    assert {k: counts[k] for k in ("runs", "prompts", "responses", "rankings", "comparisons")} == {
        "runs": 1,
        "prompts": 1,
        "responses": 3,
        "rankings": 3,
        "comparisons": 3,
    }
    assert counts["annotators"] == 0 and counts["annotation_queue"] == 0
    weights = store.query("SELECT weight FROM comparisons")["weight"]
    assert weights.tolist() == pytest.approx([1 / 3] * 3)
    assert store.query("SELECT dvc_rev FROM runs")["dvc_rev"].isna().all()
    judges = store.query("SELECT DISTINCT judge, judge_version FROM comparisons")  # version 3: from the ranking
    assert judges.values.tolist() == [["rules", "1"]]
    FeedbackStore(path).counts()  # opening again migrates nothing
    assert store.schema_version() == SCHEMA_VERSION


def test_a_populated_version_two_store_migrates_forward_with_each_pairs_judge(tmp_path):
    """The upgrade users meet: a store last written (and committed) by version-2 code."""
    path = tmp_path / "feedback.duckdb"
    version_one_store(path)
    con = duckdb.connect(str(path))
    con.execute(MIGRATIONS[2])
    con.execute("UPDATE schema_version SET version = 2")
    con.execute("INSERT INTO annotators VALUES ('alice', 'annotate', now())")
    con.close()
    store = FeedbackStore(path)
    assert store.schema_version() == SCHEMA_VERSION
    rows = store.query(
        "SELECT chosen_id, judge, judge_version, weight FROM comparisons ORDER BY chosen_id, rejected_id"
    )
    assert rows.values.tolist() == [["r0", "rules", "1", pytest.approx(1 / 3)]] * 2 + [
        ["r1", "rules", "1", pytest.approx(1 / 3)]
    ]
    assert store.counts()["annotators"] == 1
    store.snapshot_comparisons(tmp_path / "snapshot")  # the snapshot reads the migrated table


def test_plain_text_rows_become_one_turn_conversations_in_version_four(tmp_path):
    """Version 4 (conversations): an old store's prompts and responses gain their chat messages,
    and the snapshot carries them to the reward model."""
    import json

    from rlhf.snapshot import read_comparisons

    path = tmp_path / "feedback.duckdb"
    version_one_store(path)
    store = FeedbackStore(path)
    assert store.schema_version() == SCHEMA_VERSION  # opening for a write migrates
    prompt = store.query("SELECT prompt, messages, source_row FROM prompts").iloc[0]
    assert json.loads(prompt["messages"]) == [{"role": "user", "content": "q"}] and pd.isna(prompt["source_row"])
    responses = store.query("SELECT response, messages, rendered_prompt FROM responses ORDER BY response_id")
    assert [json.loads(m) for m in responses["messages"]] == [
        [{"role": "assistant", "content": f"text {i}"}] for i in range(3)
    ]
    assert responses["rendered_prompt"].isna().all()  # not known for rows written before version 4
    store.snapshot_comparisons(tmp_path / "snapshot")
    pairs = read_comparisons(tmp_path / "snapshot")
    assert json.loads(pairs["prompt_messages"].iloc[0]) == [{"role": "user", "content": "q"}]
    assert json.loads(pairs["chosen_messages"].iloc[0])[0]["content"] == pairs["chosen"].iloc[0]


def test_a_store_from_newer_code_is_refused_with_one_line(tmp_path):
    path = tmp_path / "feedback.duckdb"
    FeedbackStore(path).counts()
    con = duckdb.connect(str(path))
    con.execute("UPDATE schema_version SET version = 99")
    con.close()
    with pytest.raises(
        StoreError, match=rf"schema version 99 is newer than this code reads \({SCHEMA_VERSION}\); upgrade"
    ):
        FeedbackStore(path).counts()


def test_each_rankings_pairs_weigh_one_in_total_and_provenance_is_kept(tmp_path):
    store = FeedbackStore(tmp_path / "feedback.duckdb")
    prompts = pd.DataFrame(
        [(p, p, None, "train", "t") for p in "ab"], columns=["prompt_id", "prompt", "topic", "split", "source"]
    )
    sizes = {"a": 4, "b": 2}
    responses = pd.DataFrame(
        [(f"{p}{i}", p, i, f"{p} {i}", "ckpt-1", '{"k": 4}') for p, k in sizes.items() for i in range(k)],
        columns=["response_id", "prompt_id", "sample_index", "response", "policy_checkpoint", "sampling"],
    )
    rankings = pd.DataFrame(
        [
            (f"rank-{p}", f"{p}{i}", p, i + 1, float(-i), "{}", "human", "alice")
            for p, k in sizes.items()
            for i in range(k)
        ],
        columns=["ranking_id", "response_id", "prompt_id", "rank", "score", "reasons", "judge", "judge_version"],
    )
    store.ingest({"run_id": "run-7", "stage": "import", "git_rev": "g1", "dvc_rev": "d1"}, prompts, responses, rankings)
    totals = store.query(
        "SELECT prompt_id, sum(weight) AS total, count(*) AS pairs FROM comparisons GROUP BY 1 ORDER BY 1"
    )
    assert totals["pairs"].tolist() == [6, 1] and totals["total"].tolist() == pytest.approx([1.0, 1.0])
    row = store.query(
        """SELECT r.git_rev, r.dvc_rev, r.stage, k.judge, k.judge_version, s.policy_checkpoint, s.sampling
           FROM comparisons c JOIN runs r USING (run_id) JOIN rankings k ON k.ranking_id = c.ranking_id
           AND k.response_id = c.chosen_id JOIN responses s ON s.response_id = c.chosen_id LIMIT 1"""
    ).iloc[0]
    assert tuple(row) == ("g1", "d1", "import", "human", "alice", "ckpt-1", '{"k": 4}')
    assert store.query("SELECT annotator, source FROM annotators").values.tolist() == [["alice", "import"]]


def test_a_version_four_store_with_page_rankings_migrates_to_team_annotation(tmp_path):
    """Version 5 (team annotation): tokens and the overlap setting get their tables; a ranking the
    page recorded before keeps its event, marked as made in the list without a suggestion."""
    path = tmp_path / "feedback.duckdb"
    version_one_store(path)
    con = duckdb.connect(str(path))
    for version in (2, 3, 4):
        con.execute(MIGRATIONS[version])
    con.execute("UPDATE schema_version SET version = 4")
    con.execute("INSERT INTO annotation_queue VALUES ('item', 'p', '[\"r0\", \"r1\"]', 'human', 'run-1', now())")
    con.execute("INSERT INTO annotation_events VALUES ('item', 'alice', 'ranked', NULL, now())")
    con.execute("INSERT INTO annotation_events VALUES ('item', 'bob', 'skipped', NULL, now())")
    con.close()
    store = FeedbackStore(path)
    assert store.schema_version() == SCHEMA_VERSION
    events = store.query("SELECT annotator, action, from_suggestion, mode FROM annotation_events ORDER BY annotator")
    assert events.values.tolist()[0] == ["alice", "ranked", False, "rank"]
    assert events.iloc[1]["action"] == "skipped" and pd.isna(events.iloc[1]["mode"])
    assert store.query("SELECT count(*) AS n FROM annotator_tokens")["n"][0] == 0
    assert store.overlap() is None  # unset: the page behaves as before the upgrade
    assert store.waiting_items() == 0  # alice ranked it: as before, it no longer waits
    store.set_overlap(2)
    assert store.waiting_items() == 1  # one of two people: it waits again
    assert store.next_item("alice") is None and store.next_item("bob") is None  # seen by both
    assert store.next_item("carol")["item_id"] == "item"

"""Thumbs up/down in a real DuckDB store: writing binary labels with their provenance, idempotently,
reading them back, and the snapshot KTOTrainer reads (TRL's unpaired preference format)."""

import json

import pandas as pd
import pytest

from rlhf.errors import InputError
from rlhf.store import FeedbackStore, snapshot_scope
from rlhf.text import content_id


def sampled_rows(store: FeedbackStore, policy: str = "sft") -> None:
    """One prompt (split test) and two responses of `policy`, as sample_responses would store them."""
    prompts = pd.DataFrame(
        [
            {
                "prompt_id": content_id("tell me about cats"),
                "prompt": "tell me about cats",
                "topic": None,
                "split": "test",
                "source": "demo",
            }
        ]
    )
    responses = pd.DataFrame(
        [
            {
                "response_id": f"{policy}-{i}",
                "prompt_id": prompts["prompt_id"][0],
                "sample_index": i,
                "response": f"cats answer {i}",
                "policy_checkpoint": policy,
                "sampling": "{}",
            }
            for i in range(2)
        ]
    )
    empty_rankings = pd.DataFrame(
        columns=["ranking_id", "response_id", "prompt_id", "rank", "score", "reasons", "judge", "judge_version"]
    )
    store.ingest({"run_id": f"run-{policy}", "stage": "store_comparisons"}, prompts, responses, empty_rankings)


def page_label(desirable: bool, reason: str | None = None, annotator: str = "ann", response: int = 0) -> dict:
    return {
        "prompt": "tell me about cats",
        "response": f"cats answer {response}",
        "response_id": f"sft-{response}",
        "desirable": desirable,
        "annotator": annotator,
        "reason": reason,
        "item_id": "item-1",
    }


def test_labels_are_stored_with_provenance_once_and_a_changed_thumb_replaces_the_old(tmp_path):
    store = FeedbackStore(tmp_path / "feedback.duckdb")
    sampled_rows(store)
    labels = pd.DataFrame([page_label(False, "rude"), page_label(True, annotator="bo", response=1)])
    assert store.add_binary_labels(labels, "page", "page-run") == 2
    assert store.add_binary_labels(labels, "page", "page-run") == 0  # the same labels again add nothing
    rows = store.binary_labels()
    assert len(rows) == 2
    bad = rows[rows["annotator"] == "ann"].iloc[0]
    # the response the store holds lends its policy and the prompt its split (test, not the hash's)
    assert (bad["desirable"], bad["reason"], bad["source"], bad["policy_checkpoint"]) == (False, "rude", "page", "sft")
    assert (bad["split"], bad["item_id"], bad["run_id"], bad["response_id"]) == ("test", "item-1", "page-run", "sft-0")
    assert json.loads(bad["prompt_messages"]) == [{"role": "user", "content": "tell me about cats"}]
    # ann changes their mind: one row still, now desirable, without a reason
    assert store.add_binary_labels(pd.DataFrame([page_label(True)]), "page", "page-run-2") == 1
    rows = store.binary_labels()
    assert len(rows) == 2 and rows[rows["annotator"] == "ann"]["desirable"].tolist() == [True]
    assert rows[rows["annotator"] == "ann"]["reason"].isna().all()
    assert store.binary_labels("deployed").empty


def test_deployed_feedback_on_a_conversation_needs_no_other_table(tmp_path):
    store = FeedbackStore(tmp_path / "feedback.duckdb")
    conversation = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    labels = pd.DataFrame(
        [
            {
                "prompt": conversation,
                "response": "hello!",
                "desirable": True,
                "annotator": "user-7",
                "policy_checkpoint": "abc",
            }
        ]
    )
    assert store.add_binary_labels(labels, "deployed", "serve-1", test_fraction=0.0) == 1
    row = store.binary_labels().iloc[0]
    assert json.loads(row["prompt_messages"]) == conversation and row["split"] == "train"
    assert row["response_id"] is None or pd.isna(row["response_id"])
    assert store.counts()["prompts"] == 0  # nothing else was written


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"desirable": "maybe"}, r"row 2: desirable must be true or false"),
        ({"annotator": " "}, r"row 2: annotator must be named"),
        ({"response": ""}, r"row 2: response is empty"),
        ({"prompt": 3}, r"row 2: prompt: expected a string or a non-empty list"),
        ({"response": float("nan")}, r"row 2: response: expected a string or a non-empty list"),
        ({"split": "dev"}, r"row 2: split must be train or test"),
    ],
)
def test_a_bad_row_is_refused_by_number_and_nothing_is_written(tmp_path, change, message):
    store = FeedbackStore(tmp_path / "feedback.duckdb")
    labels = pd.DataFrame([page_label(True), {**page_label(False), **change}])
    with pytest.raises(InputError, match=message):
        store.add_binary_labels(labels, "page", "page-run")
    assert store.binary_labels().empty


def test_a_missing_column_is_named(tmp_path):
    store = FeedbackStore(tmp_path / "feedback.duckdb")
    with pytest.raises(InputError, match="missing column.*desirable"):
        store.add_binary_labels(pd.DataFrame([{"prompt": "p", "response": "r", "annotator": "a"}]), "page", "r")
    assert (
        store.add_binary_labels(pd.DataFrame(columns=["prompt", "response", "desirable", "annotator"]), "page", "r")
        == 0
    )


def test_the_snapshot_is_trls_unpaired_format_byte_identical_and_takes_its_scope(tmp_path):
    store = FeedbackStore(tmp_path / "feedback.duckdb")
    sampled_rows(store, "sft")
    store.add_binary_labels(pd.DataFrame([page_label(False, "rude"), page_label(True, response=1)]), "page", "p")
    elsewhere = {"prompt": "q", "response": "an answer", "desirable": True, "annotator": "x"}
    store.add_binary_labels(pd.DataFrame([{**elsewhere, "policy_checkpoint": "rl"}]), "deployed", "d")
    store.add_binary_labels(pd.DataFrame([elsewhere]), "import:hh", "import-hh")
    this_round = snapshot_scope("current", [], ["sft"], [], None)
    path = tmp_path / "snap" / "binary_labels.parquet"
    assert store.snapshot_binary_labels(path, this_round) == 2
    frame = pd.read_parquet(path)
    assert list(frame.columns[:3]) == ["prompt", "completion", "label"]
    assert frame["label"].dtype == bool and sorted(frame["label"]) == [False, True]
    assert set(frame["completion"]) == {"cats answer 0", "cats answer 1"}
    first = path.read_bytes()
    assert store.snapshot_binary_labels(path, this_round) == 2 and path.read_bytes() == first
    assert not path.with_name(path.name + ".partial").exists()
    # an import by name, an earlier round's policy, everything, and judges that leave people out
    assert store.snapshot_binary_labels(path, {**this_round, "imports": ["hh"]}) == 3
    # the deployed policy's thumbs come with its import set, as its edited and chosen pairs do
    assert store.snapshot_binary_labels(path, {**this_round, "imports": ["deployed"]}) == 3
    assert store.snapshot_binary_labels(path, {**this_round, "earlier_policies": ["rl"]}) == 3
    assert store.snapshot_binary_labels(path, {**this_round, "rankings": "all"}) == 4
    assert store.snapshot_binary_labels(path, None) == 4
    assert store.snapshot_binary_labels(path, {**this_round, "label_sources": ["rules"]}) == 0
    assert list(pd.read_parquet(path).columns[:3]) == ["prompt", "completion", "label"]  # empty, same columns


def test_trls_kto_trainer_reads_the_snapshot(tmp_path):
    """The snapshot's three leading columns are the dataset KTOTrainer checks for (unpaired preference)."""
    from datasets import Dataset
    from trl.data_utils import is_conversational

    store = FeedbackStore(tmp_path / "feedback.duckdb")
    sampled_rows(store)
    store.add_binary_labels(pd.DataFrame([page_label(False), page_label(True, response=1)]), "page", "p")
    path = tmp_path / "binary_labels.parquet"
    store.snapshot_binary_labels(path)
    dataset = Dataset.from_parquet(str(path))
    assert {"prompt", "completion", "label"} <= set(dataset.column_names)
    assert not is_conversational(dataset[0]) and dataset.features["label"].dtype == "bool"


def test_page_labels_are_written_once_and_only_for_an_item_of_that_one_response(tmp_path):
    """FeedbackStore.record_page_labels, as the page's journal drains it: twice the same row (a kill
    between the store's commit and the journal's mark) is one label and one event."""
    store = FeedbackStore(tmp_path / "feedback.duckdb")
    sampled_rows(store)
    prompt_id = content_id("tell me about cats")
    items = pd.DataFrame(
        [
            ("alone", prompt_id, json.dumps(["sft-0"]), "binary"),
            ("together", prompt_id, json.dumps(["sft-0", "sft-1"]), "human"),
        ],
        columns=["item_id", "prompt_id", "response_ids", "reason"],
    )
    store.enqueue({"run_id": "q", "stage": "test"}, items)
    body = {"mode": "binary", "response_id": "sft-0", "desirable": False, "reason": "rude"}
    assert store.record_page_labels([("ann", "alone", body)], "annotate-1") == [1]
    assert store.record_page_labels([("ann", "alone", body)], "annotate-1") == [1]
    refused = store.record_page_labels(
        [("ann", "together", body), ("ann", "nowhere", body), ("bo", "alone", {**body, "response_id": "sft-1"})],
        "annotate-1",
    )
    assert [outcome.startswith("StoreError") for outcome in refused] == [True, True, True]
    labels = store.binary_labels()
    assert labels[["item_id", "annotator", "desirable", "reason", "split"]].values.tolist() == [
        ["alone", "ann", False, "rude", "test"]
    ]
    events = store.query("SELECT item_id, annotator, action, mode FROM annotation_events")
    assert events.values.tolist() == [["alone", "ann", "ranked", "binary"]]
    assert store.annotation_progress("ann")["done"] == 1  # the queue counts it as ann's

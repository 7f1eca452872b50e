"""The snapshot's scope on a real DuckDB store: what it takes, what DVC would see (the scope file),
and readers that never create a store."""

import json
import subprocess
import sys

import pandas as pd
import pytest

from rlhf.errors import StoreError
from rlhf.store import FeedbackStore, scope_file, snapshot_scope

RANKING_COLUMNS = ["ranking_id", "response_id", "prompt_id", "rank", "score", "reasons", "judge", "judge_version"]


def frames(tag: str, policy: str, k: int, judge: str = "rules", prompts: str = "ab"):
    """One configuration's rows: `k` responses per prompt from `policy`, one ranking per prompt."""
    prompt_rows = pd.DataFrame(
        [(p, f"prompt {p}", None, "train", "demo") for p in prompts],
        columns=["prompt_id", "prompt", "topic", "split", "source"],
    )
    responses = pd.DataFrame(
        [(f"{policy}-{p}{i}", p, i, f"{p} answer {i}", policy, "{}") for p in prompts for i in range(k)],
        columns=["response_id", "prompt_id", "sample_index", "response", "policy_checkpoint", "sampling"],
    )
    rankings = pd.DataFrame(
        [
            (f"{tag}-{p}", f"{policy}-{p}{i}", p, i + 1, float(-i), '{"unsafe": false}', judge, "v1")
            for p in prompts
            for i in range(k)
        ],
        columns=RANKING_COLUMNS,
    )
    return prompt_rows, responses, rankings


def default_scope(policies, **changes):
    scope = snapshot_scope("current", [], policies, [], None)
    return {**scope, **changes}


def snapshot_bytes(directory):
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_the_default_scope_takes_this_configurations_rankings_as_a_fresh_store_would(tmp_path):
    """A k change in a store holding an earlier run's rankings snapshots what a fresh clone's store does."""
    old = FeedbackStore(tmp_path / "old" / "feedback.duckdb")
    old.ingest({"run_id": "run-k3", "stage": "store_comparisons"}, *frames("k3", "sft", 3))
    current = frames("k4", "sft", 4)
    old.ingest({"run_id": "run-k4", "stage": "store_comparisons"}, *current)
    fresh = FeedbackStore(tmp_path / "fresh" / "feedback.duckdb")
    fresh.ingest({"run_id": "other-run-id", "stage": "store_comparisons"}, *current)
    ids = current[2]["ranking_id"]
    scope = default_scope(["sft"])
    pairs = old.snapshot_comparisons(tmp_path / "a", ids, scope)
    assert pairs == fresh.snapshot_comparisons(tmp_path / "b", ids, scope) == 2 * 6
    assert snapshot_bytes(tmp_path / "a") == snapshot_bytes(tmp_path / "b")
    taken = json.loads((tmp_path / "a" / "scope.json").read_text())["taken"]
    assert taken == [{"source": "this configuration", "run_id": None, "rankings": 2}]
    # `all` is the earlier behaviour: both runs' rankings together
    assert old.snapshot_comparisons(tmp_path / "c", ids, {**scope, "rankings": "all"}) == 2 * (3 + 6)


def snapshotted_store(tmp_path):
    """A store holding this configuration's rankings (policy sft), snapshotted under a scope that
    also names the import hh: (store, the current frames, the scope)."""
    store = FeedbackStore(tmp_path / "feedback.duckdb")
    current = frames("cur", "sft", 3)
    store.ingest({"run_id": "run-1", "stage": "store_comparisons"}, *current)
    scope = default_scope(["sft"], imports=["hh"])
    store.snapshot_comparisons(tmp_path / "snap", current[2]["ranking_id"], scope)
    return store, current, scope


def test_the_scope_file_changes_with_what_the_scope_takes_and_nothing_else(tmp_path):
    store, current, scope = snapshotted_store(tmp_path)
    recorded = scope_file(store.path).read_text()
    empty = f"{0:016x}"
    assert json.loads(recorded) == {
        "scope": scope,
        "store_rows": 0,
        "digest": empty,
        "binary_labels": 0,
        "binary_digest": empty,
    }
    # an import the scope does not name, and an AI run of another policy: the file stays as it was
    store.ingest({"run_id": "import-other", "stage": "import"}, *frames("other", "import:x", 2, "human", "c"))
    store.ingest({"run_id": "run-2", "stage": "store_comparisons"}, *frames("elsewhere", "rl", 3))
    store.counts()  # a read
    assert scope_file(store.path).read_text() == recorded
    # the named import: it changes, and the next snapshot takes it, saying so
    store.ingest({"run_id": "import-hh", "stage": "import"}, *frames("hh", "import:hh", 2, "human", "d"))
    after_import = json.loads(scope_file(store.path).read_text())
    assert after_import["store_rows"] == 2 and after_import["digest"] != f"{0:016x}"
    assert store.snapshot_comparisons(tmp_path / "snap", current[2]["ranking_id"], scope) == 2 * 3 + 1
    taken = json.loads((tmp_path / "snap" / "scope.json").read_text())["taken"]
    assert {"source": "import hh", "run_id": "import-hh", "rankings": 1} in taken
    # people ranking responses of this round's policy count too; a person re-ranking changes the file
    store.enqueue(
        {"run_id": "run-1", "stage": "t"},
        pd.DataFrame([{"item_id": "i", "prompt_id": "a", "response_ids": '["sft-a0", "sft-a1"]', "reason": "human"}]),
    )
    store.record_human_ranking("alice", "i", {"sft-a0": 1, "sft-a1": 2}, [], "page")
    first = scope_file(store.path).read_text()
    assert first != json.dumps(after_import)
    store.record_human_ranking("alice", "i", {"sft-a0": 2, "sft-a1": 1}, [], "page")
    assert scope_file(store.path).read_text() != first


def thumbs(response: str, desirable: bool, policy: str, reason: str | None = None) -> pd.DataFrame:
    row = {"prompt": "prompt a", "response": response, "desirable": desirable, "annotator": "alice"}
    return pd.DataFrame([{**row, "policy_checkpoint": policy, "reason": reason}])


def test_a_thumb_the_scope_takes_changes_the_scope_file_so_dvc_reruns_the_snapshot(tmp_path):
    """Binary labels are store-side rows too: given after the last snapshot, they must reach DVC."""
    store, current, scope = snapshotted_store(tmp_path)
    before = scope_file(store.path).read_text()
    # a thumb on another policy's response, from a source the scope does not name: nothing changes
    store.add_binary_labels(thumbs("elsewhere", True, "rl"), "page", "run-page")
    assert scope_file(store.path).read_text() == before
    # a thumb on this round's policy: the file says so
    store.add_binary_labels(thumbs("a answer 0", False, "sft"), "page", "run-page")
    after_page = json.loads(scope_file(store.path).read_text())
    assert after_page["binary_labels"] == 1 and after_page["binary_digest"] != f"{0:016x}"
    assert (after_page["store_rows"], after_page["digest"]) == (
        json.loads(before)["store_rows"],
        json.loads(before)["digest"],
    )
    # the same thumb with a reason now: changed again; an import the scope names: counted
    store.add_binary_labels(thumbs("a answer 0", False, "sft", "rude"), "page", "run-page")
    with_reason = json.loads(scope_file(store.path).read_text())
    assert with_reason["binary_labels"] == 1 and with_reason["binary_digest"] != after_page["binary_digest"]
    store.add_binary_labels(thumbs("imported", True, "import:hh"), "import:hh", "import-hh-thumbs")
    assert json.loads(scope_file(store.path).read_text())["binary_labels"] == 2
    # and the next snapshot takes exactly those two
    store.snapshot_comparisons(tmp_path / "snap", current[2]["ranking_id"], scope)
    assert store.snapshot_binary_labels(tmp_path / "snap" / "binary_labels.parquet", scope) == 2


def test_label_sources_limit_the_snapshot_to_those_judges(tmp_path):
    store = FeedbackStore(tmp_path / "feedback.duckdb")
    current = frames("cur", "sft", 3)
    store.ingest({"run_id": "run-1", "stage": "store_comparisons"}, *current)
    store.ingest({"run_id": "import-hh", "stage": "import"}, *frames("hh", "import:hh", 2, "human", "d"))
    scope = default_scope(["sft"], imports=["hh"], label_sources=["human"])
    assert store.snapshot_comparisons(tmp_path / "snap", current[2]["ranking_id"], scope) == 1
    pairs = pd.read_parquet(tmp_path / "snap" / "pairs.parquet")
    assert set(pairs["judge"]) == {"human"}
    assert set(pd.read_parquet(tmp_path / "snap" / "prompts.parquet")["prompt_id"]) == {"d"}


def test_a_scope_naming_what_the_store_lacks_is_reported(tmp_path):
    store = FeedbackStore(tmp_path / "feedback.duckdb")
    store.ingest({"run_id": "run-1", "stage": "store_comparisons"}, *frames("cur", "sft", 3))
    scope = default_scope(["sft"], imports=["hh"], earlier_policies=["round-1-policy"])
    assert store.absent_sources(scope) == ["import hh", "the rankings of policy round-1-policy"]


def test_a_reader_refuses_a_missing_store_and_creates_nothing(tmp_path):
    path = tmp_path / "typo" / "feedback.duckdb"
    with pytest.raises(StoreError, match=r"typo/feedback.duckdb: no store here \(nothing was created"):
        FeedbackStore(path, create=False).counts()
    assert not (tmp_path / "typo").exists()


@pytest.mark.parametrize(
    "command",
    [
        ["annotate", "status", "--store", "{path}"],
        ["annotate", "revoke", "alice", "--store", "{path}"],
        ["annotate", "--store", "{path}", "status"],
        ["store", "--path", "{path}", "stats"],
        ["store", "--path", "{path}", "agreement"],
        ["store", "--path", "{path}", "export", "{out}", "--format", "csv"],
    ],
)
def test_read_commands_on_a_missing_store_exit_2_naming_it_and_create_nothing(tmp_path, command):
    path = tmp_path / "typo.duckdb"
    argv = [part.format(path=path, out=tmp_path / "out.csv") for part in command]
    result = subprocess.run([sys.executable, "-m", "rlhf.cli", *argv], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and "no store here" in lines[0], result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_write_command_creates_the_store_and_says_so(tmp_path):
    path = tmp_path / "new.duckdb"
    result = subprocess.run(
        [sys.executable, "-m", "rlhf.cli", "annotate", "add-annotator", "alice", "--store", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert f"created the store {path}" in result.stderr and path.is_file()

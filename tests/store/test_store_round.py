"""store_round, the store_comparisons stage's work, on a real DuckDB file: what it stores, the
snapshot it writes and the figures it reports; a scope naming what the store lacks is refused
before any snapshot."""

import json

import pandas as pd
import pytest

from rlhf.config import Params
from rlhf.errors import InputError
from rlhf.snapshot import read_comparisons
from rlhf.store import FeedbackStore
from rlhf.store.round import round_scope, store_round
from tests.store.test_snapshot_scope import frames, snapshot_bytes

QUEUE_COLUMNS = ["item_id", "prompt_id", "response_ids", "reason"]


def params_for(store_path, **snapshot) -> Params:
    return Params.model_validate({"store": {"path": str(store_path), "snapshot": snapshot}})


def one_round(tmp_path, params: Params, queue: pd.DataFrame, tag: str = "k3"):
    store = FeedbackStore(params.store.path)
    prompts, responses, rankings = frames(tag, "sft", 3)
    run = {"run_id": f"run-{tag}", "stage": "store_comparisons"}
    return store_round(store, params, run, prompts, responses, rankings, queue, tmp_path / "comparisons")


def test_a_round_stores_the_rankings_snapshots_their_pairs_and_reports_the_store(tmp_path):
    params = params_for(tmp_path / "feedback.duckdb")
    queue = pd.DataFrame([("item-a", "a", json.dumps(["sft-a0", "sft-a1"]), "human")], columns=QUEUE_COLUMNS)
    stored = one_round(tmp_path, params, queue)
    assert stored.added["rankings"] == 2 * 3 and stored.added["comparisons"] == 2 * 3  # two prompts, C(3,2) each
    assert stored.metrics["snapshot_comparisons"] == len(read_comparisons(tmp_path / "comparisons")) == 6
    assert stored.metrics["store"] == FeedbackStore(params.store.path).counts()
    assert stored.metrics["queue_waiting"] == 1
    assert stored.metrics["agreement"]["ai_vs_human"] == {}  # no person ranked yet
    assert stored.low_agreement == []
    first = snapshot_bytes(tmp_path / "comparisons")

    again = one_round(tmp_path, params, queue)
    assert set(again.added.values()) == {0}  # the same rankings again add nothing
    assert again.metrics == stored.metrics
    assert snapshot_bytes(tmp_path / "comparisons") == first


def test_a_scope_naming_an_import_the_store_lacks_is_refused_before_any_snapshot(tmp_path):
    params = params_for(tmp_path / "feedback.duckdb", imports=["hh-rlhf"])
    with pytest.raises(InputError, match="store.snapshot takes import hh-rlhf, which .* does not hold"):
        one_round(tmp_path, params, pd.DataFrame(columns=QUEUE_COLUMNS))
    assert not (tmp_path / "comparisons").exists()


def test_the_scope_keeps_the_earlier_rounds_that_store_snapshot_rounds_names(tmp_path):
    earlier = [{"number": 1, "policy_checkpoint": "p1"}, {"number": 2, "policy_checkpoint": "p2"}]
    responses = pd.DataFrame({"policy_checkpoint": ["p3", "p3"]})
    for rounds, kept in [("all", ["p1", "p2"]), ([2], ["p2"]), ([], [])]:
        params = Params.model_validate({"store": {"snapshot": {"rounds": rounds}}, "round": {"earlier": earlier}})
        scope = round_scope(params, responses)
        assert (scope["policies"], scope["earlier_policies"]) == (["p3"], kept)

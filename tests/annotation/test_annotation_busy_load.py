"""Issue 28, item 5, bounded: 8 annotators submit at full speed while another process holds the store
(a stage's transaction: its file lock and the DuckDB file) for longer than they submit. The page
answers from its journal and its copy of the queue; afterwards every acknowledged ranking is in the
store. The same code as bench/annotation_load.py (a real `rlhf annotate serve` on 127.0.0.1, a real
DuckDB file), shorter: the bench's 60 s run is the measurement to quote."""

import pytest

from bench.annotation_load import measure

pytestmark = pytest.mark.timeout(240)


def test_eight_annotators_through_a_held_store_lose_nothing_and_never_see_a_500(tmp_path):
    result = measure(tmp_path, clients=8, seconds=6.0, lock_seconds=7.0, items=400, drain_timeout_s=60)
    assert result["acknowledged"] > 0 and not result["queue_exhausted"]
    assert result["lost"] == 0, result
    assert result["answered_500"] == 0 and result["answered_5xx"] == 0, result
    assert result["request_p99_ms"] < 1000, result
    assert result["submits_per_s"] >= 30, result

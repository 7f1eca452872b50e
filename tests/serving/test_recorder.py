"""The group-commit writer over a real DuckDB store: requests that wait together commit in one
transaction, and one job that fails costs only itself."""

import threading
import time

import pytest

from rlhf.serving.recorder import Recorder
from rlhf.store import exchanges

pytestmark = pytest.mark.timeout(60)


def exchange_row(exchange_id: str) -> dict:
    row = dict.fromkeys(exchanges.EXCHANGE_COLUMNS, "x")
    return {**row, "exchange_id": exchange_id, "rendered_prompt": None}


def submit_while_the_store_is_held(store, recorder: Recorder, jobs: list) -> list:
    """Each job submitted from its own thread while another process's write holds the store, so they
    queue and go in one batch once it is free; each thread's result, or the exception it raised."""
    outcomes: list = [None] * len(jobs)

    def submit(index: int) -> None:
        try:
            outcomes[index] = recorder.submit(jobs[index], timeout_s=30)
        except Exception as error:
            outcomes[index] = error

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(len(jobs))]
    recorder.submit(lambda con: None)  # the writer is started and idle
    with store.lock:
        for thread in threads:
            thread.start()
        deadline = time.time() + 10
        while recorder.pending < len(jobs):  # queued, or taken into the batch that waits for the store
            assert time.time() < deadline, "the jobs did not queue"
            time.sleep(0.01)
    for thread in threads:
        thread.join(timeout=30)
    return outcomes


def test_jobs_that_wait_together_commit_together_and_a_failing_one_fails_alone(store):
    recorder = Recorder(store)

    def broken(con):
        exchanges.record_exchanges(con, [exchange_row("c")])
        raise ValueError("a bug in one job")

    try:
        jobs = [lambda con, i=i: exchanges.record_exchanges(con, [exchange_row(f"ok-{i}")]) for i in range(4)]
        together = submit_while_the_store_is_held(store, recorder, jobs)
        assert together == [1, 1, 1, 1] and recorder.rewritten_batches == 0
        # now() is the transaction's start: the first job may have gone alone, the other three together
        started = store.query("SELECT count(DISTINCT created_at) AS n FROM exchanges WHERE exchange_id LIKE 'ok-%'")
        assert started["n"][0] <= 2
        mixed = [jobs[0], broken, lambda con: exchanges.record_exchanges(con, [exchange_row("d")])]
        outcomes = submit_while_the_store_is_held(store, recorder, mixed)
    finally:
        recorder.close()
    assert outcomes[0] == 0  # ok-0 again: stored once already, nothing added
    assert isinstance(outcomes[1], ValueError) and outcomes[2] == 1
    assert recorder.rewritten_batches == 1  # rolled back by the broken job, written again without it
    stored = sorted(store.query("SELECT exchange_id FROM exchanges")["exchange_id"])
    assert stored == ["d", "ok-0", "ok-1", "ok-2", "ok-3"]  # the broken job's row was rolled back

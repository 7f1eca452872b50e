"""Group commit: the serving endpoint's requests hand their store writes to one writer thread, which
runs every write waiting at that moment in one transaction and then answers each request.

Why: a write is one transaction under the store's file lock, and opening the DuckDB file for it costs
about 30 ms here, so sixteen clients writing one transaction each would queue behind one another;
taken together they pay the open once. A request still gets its answer only after its rows are
committed, so an acknowledged exchange is in the store even if the server is killed the next moment.

A job is a function of the open connection. It returns its result, or a refusal as a value (see
rlhf.store.exchanges): an exception rolls back the whole batch, so the writer fails that job and
writes the others again without it. An error of the store itself (busy past its lock's timeout)
fails every job of the batch at once.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import duckdb

from rlhf.store import FeedbackStore

log = logging.getLogger(__name__)

# A pause after each batch: the store's in-process lock is not fair, and a writer that takes it back
# at once kept a sign-in's read of the store (the same file, this process) out for seconds under load.
BETWEEN_BATCHES_S = 0.002

Job = Callable[[duckdb.DuckDBPyConnection], Any]


class Recorder:
    """One writer thread over `store`; `submit(job)` blocks until the job's transaction committed."""

    def __init__(self, store: FeedbackStore, max_batch: int = 256):
        self.store, self.max_batch = store, max_batch
        self.rewritten_batches = 0  # batches rolled back by one job's exception, written again without it
        self.jobs: queue.Queue[tuple[Job, Future] | None] = queue.Queue()
        self._pending, self._pending_lock = 0, threading.Lock()
        self.thread = threading.Thread(target=self._write_forever, name="exchange-recorder", daemon=True)
        self.thread.start()

    def submit(self, job: Job, timeout_s: float | None = None) -> Any:
        """The job's result once it is committed; its exception (or the store's) if it failed."""
        done: Future = Future()
        with self._pending_lock:
            self._pending += 1
        done.add_done_callback(self._answered)
        self.jobs.put((job, done))
        return done.result(timeout=timeout_s)

    @property
    def pending(self) -> int:
        """Jobs submitted and not answered yet: queued, or in the batch being written."""
        with self._pending_lock:
            return self._pending

    def _answered(self, _done: Future) -> None:
        with self._pending_lock:
            self._pending -= 1

    def close(self) -> None:
        """Finish the jobs queued so far, then stop the writer."""
        self.jobs.put(None)
        self.thread.join()

    def _write_forever(self) -> None:
        while True:
            first = self.jobs.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    more = self.jobs.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self.jobs.put(None)  # stop after this batch
                    break
                batch.append(more)
            self._write(batch)
            time.sleep(BETWEEN_BATCHES_S)

    def _write(self, batch: list[tuple[Job, Future]]) -> None:
        running = None  # the index of the job running when an exception came; None: the store's own
        try:
            with self.store.transaction() as con:
                results = []
                for job, _ in batch:
                    running = len(results)
                    results.append(job(con))
                running = None
        except Exception as error:
            if running is None:  # the store is busy or cannot be written: every job fails with it
                for _, done in batch:
                    done.set_exception(error)
                return
            self.rewritten_batches += 1
            log.warning("a store write failed (%s); writing the other %d of its batch again", error, len(batch) - 1)
            batch[running][1].set_exception(error)
            if rest := batch[:running] + batch[running + 1 :]:
                self._write(rest)  # rolled back with it: written again without it
            return
        for (_, done), result in zip(batch, results):
            done.set_result(result)

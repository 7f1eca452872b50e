"""The ranking page's durable local journal: what it served to whom, and what people sent back.

The feedback store can be busy for a minute (a pipeline stage holds its lock; another program holds
the DuckDB file). A ranking the page acknowledged must survive that, and a kill. So the page writes
each submission (a ranking, a thumbs up or down, a skip) to this journal first: SQLite in WAL mode with synchronous=FULL, one
committed row per submission, before it answers "saved". One writer (`Drainer`) copies pending rows
into the store, oldest first, a batch in one transaction per kind (opening the DuckDB file costs tens of
milliseconds: one open per row drained about 6 rows/s), and marks them drained; a busy store leaves
them pending for the next pass. A kill between the acknowledgement and the drain leaves the row
pending: the next page server on the same store drains it on start. A kill between the store's
commit and the journal's mark would drain the row twice; the store first asks whether that
annotator's event for the item is there already (FeedbackStore.record_page_submissions), so it gets
each ranking and its events once.

The journal also answers what the page may accept: an item served to that annotator (`served`),
and not yet ranked or skipped by them. A second identical submission is the same one (the page
resent it after a lost answer) and changes nothing; a different one is refused.

The page also keeps a copy of the store's open queue (`QueueCopy`, read by the drainer every 30 s while the
store is free) and serves the next item from it while the store is busy or while that person has
rankings still pending: what they sent is in the journal, so the copy never serves it again, and
the overlap counts rankings the store has not taken yet. Once a request finds the store busy, the
page stops asking it (`Drainer.store_free`) until the drainer's next pass gets in: requests answer
from the journal and the copy at once instead of each waiting out the store's lock.

The file sits beside the store (`feedback.duckdb.journal`); a store at ":memory:" gets a journal in
memory. One page server per store: the journal's drainer is that server's one writer.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import threading
import time

import filelock

from rlhf.errors import StoreError
from rlhf.store import FeedbackStore
from rlhf.store.binary import BINARY_MODE

SCHEMA = """
CREATE TABLE IF NOT EXISTS served (
    annotator TEXT NOT NULL, item_id TEXT NOT NULL,
    response_ids TEXT NOT NULL,          -- JSON list: the responses the page showed
    served_at REAL NOT NULL,
    PRIMARY KEY (annotator, item_id)
);
CREATE TABLE IF NOT EXISTS sent (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    annotator TEXT NOT NULL, item_id TEXT NOT NULL,
    action TEXT NOT NULL,                -- ranked (a ranking, or a thumbs up/down: body mode binary) or skipped
    body TEXT NOT NULL,                  -- JSON: the submission as the store takes it
    received_at REAL NOT NULL,
    drained_at REAL,                     -- NULL while pending
    pairs INTEGER,                       -- the store's pair count, once drained
    error TEXT,                          -- the store refused it (kept, never retried)
    UNIQUE (annotator, item_id)
);
"""


def journal_path(store: FeedbackStore) -> str:
    return ":memory:" if str(store.path) == ":memory:" else str(store.path) + ".journal"


class StoreBusy(Exception):
    """The page knows the store is busy (a request found it so a moment ago) and did not ask it."""


def is_busy(error: BaseException) -> bool:
    """The store could not be opened in time: another process holds it (try again later)."""
    return isinstance(error, filelock.Timeout) or (
        isinstance(error, StoreError) and "cannot open the store" in str(error)
    )


class Journal:
    def __init__(self, path: str):
        self.path = path
        self.lock = threading.Lock()
        self.con = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self.con.execute("PRAGMA journal_mode=WAL")
        self.con.execute("PRAGMA synchronous=FULL")
        self.con.executescript(SCHEMA)

    def serve(self, annotator: str, item_id: str, response_ids: list[str]) -> None:
        with self.lock:
            self.con.execute(
                "INSERT OR IGNORE INTO served VALUES (?, ?, ?, ?)",
                [annotator, item_id, json.dumps(response_ids), time.time()],
            )

    def served(self, annotator: str, item_id: str) -> list[str] | None:
        """The response ids the page showed `annotator` for `item_id`; None if it never served it to them."""
        with self.lock:
            row = self.con.execute(
                "SELECT response_ids FROM served WHERE annotator = ? AND item_id = ?", [annotator, item_id]
            ).fetchone()
        return json.loads(row[0]) if row else None

    def accept(self, annotator: str, item_id: str, action: str, body: dict) -> tuple[bool, dict | None]:
        """Write a submission durably; (True, None) if new, else (False, the one already there:
        {"action", "body", "seq"})."""
        text = json.dumps(body, sort_keys=True)
        with self.lock:
            row = self.con.execute(
                "SELECT action, body, seq FROM sent WHERE annotator = ? AND item_id = ?", [annotator, item_id]
            ).fetchone()
            if row:
                return False, {"action": row[0], "body": json.loads(row[1]), "seq": row[2]}
            self.con.execute(
                "INSERT INTO sent (annotator, item_id, action, body, received_at) VALUES (?, ?, ?, ?, ?)",
                [annotator, item_id, action, text, time.time()],
            )  # autocommit: durable (WAL, synchronous=FULL) when this returns
        return True, None

    def outcome(self, annotator: str, item_id: str) -> dict:
        with self.lock:
            drained_at, pairs, error = self.con.execute(
                "SELECT drained_at, pairs, error FROM sent WHERE annotator = ? AND item_id = ?", [annotator, item_id]
            ).fetchone()
        return {"stored": drained_at is not None and error is None, "pairs": pairs, "error": error}

    def sent_items(self, annotator: str) -> set[str]:
        """Every item `annotator` ranked or skipped through this page, drained or not."""
        with self.lock:
            return {row[0] for row in self.con.execute("SELECT item_id FROM sent WHERE annotator = ?", [annotator])}

    def drained_through(self) -> int:
        """The highest seq below which every row is drained (the drainer takes rows in seq order)."""
        with self.lock:
            return self.con.execute(
                "SELECT coalesce((SELECT min(seq) - 1 FROM sent WHERE drained_at IS NULL), "
                "(SELECT max(seq) FROM sent), 0)"
            ).fetchone()[0]

    def ranked_after(self, seq: int) -> dict[str, int]:
        """{item_id: people who ranked it} among rows after `seq` (those a copy of the store read then lacks)."""
        with self.lock:
            return dict(
                self.con.execute(
                    "SELECT item_id, count(*) FROM sent WHERE seq > ? AND action = 'ranked' AND error IS NULL "
                    "GROUP BY item_id",
                    [seq],
                ).fetchall()
            )

    def pending(self, limit: int = 100) -> list[tuple]:
        with self.lock:
            return self.con.execute(
                "SELECT seq, annotator, item_id, action, body FROM sent WHERE drained_at IS NULL ORDER BY seq LIMIT ?",
                [limit],
            ).fetchall()

    def pending_for(self, annotator: str) -> int:
        with self.lock:
            return self.con.execute(
                "SELECT count(*) FROM sent WHERE drained_at IS NULL AND annotator = ?", [annotator]
            ).fetchone()[0]

    def pending_count(self) -> int:
        with self.lock:
            return self.con.execute("SELECT count(*) FROM sent WHERE drained_at IS NULL").fetchone()[0]

    def mark_drained(self, outcomes: list[tuple[int, int | str | None]]) -> None:
        """Each (seq, the store's outcome: pairs, None for a skip, or the text of its refusal), at once."""
        now = time.time()
        rows = [(now, None if isinstance(o, str) else o, o if isinstance(o, str) else None, seq) for seq, o in outcomes]
        with self.lock:
            self.con.execute("BEGIN")
            self.con.executemany("UPDATE sent SET drained_at = ?, pairs = ?, error = ? WHERE seq = ?", rows)
            self.con.execute("COMMIT")

    def close(self) -> None:
        with self.lock:
            self.con.close()


class QueueCopy:
    """The store's open queue as the page last read it (FeedbackStore.open_queue), to serve from
    while the store is busy. `refresh` runs under the drainer's writing lock, so the journal's rows
    after `watermark` are exactly those the copy lacks."""

    def __init__(self, journal: Journal):
        self.journal = journal
        self.copy: tuple[dict, int] | None = None  # (open_queue's answer, watermark), replaced whole

    def refresh(self, store: FeedbackStore, limit: int = 2000) -> None:
        """Read the first `limit` open items (2,000 read in ~0.4 s, 5,000 in ~1.5 s, the store locked all
        the while; 2,000 outlast a minute's lock at 80 submits/s with everyone ranking every item)."""
        watermark = self.journal.drained_through()
        self.copy = (store.open_queue(limit), watermark)

    def next_for(self, annotator: str) -> dict | None:
        """The first open item of the copy that `annotator` has not sent and that still wants people;
        StoreBusy if there is no copy yet, or the copy was cut short and `annotator` finished it."""
        if self.copy is None:
            raise StoreBusy("no copy of the queue yet")
        queue, watermark = self.copy
        sent = self.journal.sent_items(annotator)
        overlap = queue["overlap"]
        ranked_since = self.journal.ranked_after(watermark) if overlap is not None else {}
        for item in queue["items"]:
            item_id = item["item_id"]
            if item_id in sent or (annotator, item_id) in queue["done"]:
                continue
            if overlap is not None and item["people"] + ranked_since.get(item_id, 0) >= overlap:
                continue
            return {key: value for key, value in item.items() if key != "people"}
        if not queue["complete"]:
            raise StoreBusy("the copy of the queue was cut short")
        return None


class Drainer:
    """The journal's one writer into the store: `drain()` copies what is pending; `start()` runs it
    on a thread every `every_s` (at once when `wake()`d or more wait) until `stop()`, and reads `queue`
    (the copy the page serves from while the store is busy) afresh every `refresh_s`. Whoever finds
    the store busy says so (`note_busy`): until a pass of the
    drainer gets in again, `store_free()` is False and requests do not wait on the store."""

    def __init__(
        self, journal: Journal, store: FeedbackStore, run_id: str, every_s: float = 1.0, refresh_s: float = 30.0
    ):
        self.journal, self.store, self.run_id, self.every_s, self.refresh_s = journal, store, run_id, every_s, refresh_s
        self.queue = QueueCopy(journal)
        self.writing = threading.Lock()
        self.woken = threading.Event()
        self.stopping = threading.Event()
        self.busy = threading.Event()
        self.thread: threading.Thread | None = None

    def store_free(self) -> bool:
        return not self.busy.is_set()

    def note_busy(self) -> None:
        self.busy.set()

    def drain(self, wait_s: float | None = None, limit: int = 100) -> int:
        """Copy up to `limit` pending rows into the store, in one transaction; returns how many were
        drained (0 if the store is busy, or if another drain is running and `wait_s` passes)."""
        if not self.writing.acquire(timeout=-1 if wait_s is None else wait_s):
            return 0
        try:
            return self.write(self.journal.pending(limit))
        finally:
            self.writing.release()

    def write(self, rows: list[tuple]) -> int:
        """`rows` into the store in one transaction and marked drained; if the batch fails other than by
        a busy store, one at a time, so the row at fault is kept with its reason and the rest go in."""
        if not rows:
            return 0
        try:
            outcomes = self.store_rows(rows)
        except Exception as error:
            if is_busy(error):
                self.note_busy()
                return 0
            if len(rows) > 1:
                return sum(self.write([row]) for row in rows)
            outcomes = [f"{type(error).__name__}: {error}"]
        self.journal.mark_drained([(seq, outcome) for (seq, *_), outcome in zip(rows, outcomes)])
        self.busy.clear()
        return len(rows)

    def store_rows(self, rows: list[tuple]) -> list:
        """The store's outcome of each row, in order: thumbs up/down (mode binary) as binary labels,
        rankings and skips as before; one transaction each kind."""
        bodies = {seq: json.loads(body) for seq, _, _, _, body in rows}
        binary = [row for row in rows if bodies[row[0]].get("mode") == BINARY_MODE]
        others = [row for row in rows if bodies[row[0]].get("mode") != BINARY_MODE]
        outcomes = {}
        if others:
            written = self.store.record_page_submissions(
                [(a, i, act, bodies[seq]) for seq, a, i, act, _ in others], self.run_id
            )
            outcomes.update(zip([row[0] for row in others], written))
        if binary:
            written = self.store.record_page_labels([(a, i, bodies[seq]) for seq, a, i, _, _ in binary], self.run_id)
            outcomes.update(zip([row[0] for row in binary], written))
        return [outcomes[row[0]] for row in rows]

    def refresh_queue(self) -> bool:
        """Read the queue's copy afresh (and, getting in, clear `busy`); False if the store is busy."""
        with self.writing:
            try:
                self.queue.refresh(self.store)
            except Exception as error:
                if not is_busy(error):
                    raise
                self.note_busy()
                return False
        self.busy.clear()
        return True

    def wake(self) -> None:
        self.woken.set()

    def start(self) -> None:
        def loop():
            # ~20 ms a row in one transaction: a batch of 32 holds the store's lock well under a second
            refreshed_at, limit = -float("inf"), 32
            while not self.stopping.is_set():
                drained = 0
                try:
                    drained = self.drain(limit=limit) if self.journal.pending_count() else 0
                    if self.busy.is_set() or time.monotonic() - refreshed_at > self.refresh_s:
                        if self.refresh_queue():
                            refreshed_at = time.monotonic()
                except Exception as error:
                    print(f"rlhf: the journal's drainer: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
                if drained < limit:  # a full batch: more wait, go on at once
                    self.woken.wait(self.every_s)
                    self.woken.clear()

        self.thread = threading.Thread(target=loop, name="journal-drainer", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.woken.set()
        if self.thread is not None:
            self.thread.join(timeout=30)

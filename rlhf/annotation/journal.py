"""The ranking page's durable local journal: what it served to whom, and what people sent back.

The feedback store can be busy for a minute (a pipeline stage holds its lock; another program holds
the DuckDB file). A ranking the page acknowledged must survive that, and a kill. So the page writes
each submission (and skip) to this journal first: SQLite in WAL mode with synchronous=FULL, one
committed row per submission, before it answers "saved". One writer (`Drainer`) copies pending rows
into the store, oldest first, and marks each drained; a busy store leaves them pending for the next
pass. A kill between the acknowledgement and the drain leaves the row pending: the next page server
on the same store drains it on start. A kill between the store's commit and the journal's mark
would drain the row twice; the drainer first asks the store whether that annotator's event for the
item is there already, so the store gets each ranking and its events once.

The journal also answers what the page may accept: an item served to that annotator (`served`),
and not yet ranked or skipped by them. A second identical submission is the same one (the page
resent it after a lost answer) and changes nothing; a different one is refused.

The file sits beside the store (`feedback.duckdb.journal`); a store at ":memory:" gets a journal in
memory. One page server per store: the journal's drainer is that server's one writer.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

import filelock

from rlhf.errors import StoreError
from rlhf.store import HUMAN_JUDGE, FeedbackStore
from rlhf.text import content_id

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
    action TEXT NOT NULL,                -- ranked or skipped
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
                "INSERT OR IGNORE INTO served VALUES (?, ?, ?, ?)", [annotator, item_id, json.dumps(response_ids), time.time()]
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

    def mark(self, seq: int, pairs: int | None = None, error: str | None = None) -> None:
        with self.lock:
            self.con.execute("UPDATE sent SET drained_at = ?, pairs = ?, error = ? WHERE seq = ?", [time.time(), pairs, error, seq])

    def close(self) -> None:
        with self.lock:
            self.con.close()


class Drainer:
    """The journal's one writer into the store: `drain()` copies what is pending; `start()` runs it
    on a thread every `every_s` (and at once when `wake()`d) until `stop()`."""

    def __init__(self, journal: Journal, store: FeedbackStore, run_id: str, every_s: float = 1.0):
        self.journal, self.store, self.run_id, self.every_s = journal, store, run_id, every_s
        self.writing = threading.Lock()
        self.woken = threading.Event()
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None

    def drain(self, wait_s: float | None = None) -> int:
        """Copy pending rows into the store; returns how many were drained (0 if the store is busy,
        or if another drain is running and `wait_s` passes)."""
        if not self.writing.acquire(timeout=-1 if wait_s is None else wait_s):
            return 0
        try:
            drained = 0
            for seq, annotator, item_id, action, body in self.journal.pending():
                try:
                    pairs = self.apply(annotator, item_id, action, json.loads(body))
                except Exception as error:  # noqa: BLE001 - busy: later; else kept with its reason
                    if is_busy(error):
                        break
                    self.journal.mark(seq, error=f"{type(error).__name__}: {error}")
                    continue
                self.journal.mark(seq, pairs=pairs)
                drained += 1
            return drained
        finally:
            self.writing.release()

    def apply(self, annotator: str, item_id: str, action: str, body: dict) -> int | None:
        done = self.store.query(
            "SELECT count(*) AS n FROM annotation_events WHERE annotator = ? AND item_id = ? AND action = ?",
            [annotator, item_id, action],
        )["n"].iloc[0]
        if action == "skipped":
            if not done:
                self.store.skip_item(annotator, item_id)
            return None
        if done:  # drained before a kill took the mark: count what the store holds
            return int(
                self.store.query(
                    "SELECT count(*) AS n FROM comparisons WHERE ranking_id = ?", [content_id(item_id, HUMAN_JUDGE, annotator)]
                )["n"].iloc[0]
            )
        return self.store.record_human_ranking(
            annotator, item_id, body["ranks"], body["unsafe"], self.run_id,
            from_suggestion=body["from_suggestion"], mode=body["mode"],
        )  # fmt: skip

    def wake(self) -> None:
        self.woken.set()

    def start(self) -> None:
        def loop():
            while not self.stopping.is_set():
                self.woken.wait(self.every_s)
                self.woken.clear()
                if self.journal.pending_count():
                    self.drain()

        self.thread = threading.Thread(target=loop, name="journal-drainer", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.woken.set()
        if self.thread is not None:
            self.thread.join(timeout=30)

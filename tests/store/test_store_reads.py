"""Reads take no writer lock unless a write is open: they open the file read-only, wait only while a
write is open, and give up after their bound with one line naming the writer. Real processes hold
the store; `rlhf store stats` runs as a user runs it."""

import subprocess
import sys
import threading
import time

import duckdb
import pandas as pd
import pytest

from rlhf import chat
from rlhf.errors import StoreError
from rlhf.ranking import QUEUE_COLUMNS, RANKING_COLUMNS, queue_item
from rlhf.store import FeedbackStore
from rlhf.store.ingest import one_turn_json
from tests.support.store_data import frames

HOLD_A_WRITE = """
import sys, time
from rlhf.store import FeedbackStore
with FeedbackStore(sys.argv[1]).transaction():  # what a stage holds while it writes
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""

HOLD_THE_LOCK = """
import sys, time
from filelock import FileLock
with FileLock(sys.argv[1] + ".lock"):  # a writer between its opens of the file, or queued for it
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""

HOLD_A_READ = """
import sys, time
import duckdb
with duckdb.connect(sys.argv[1], read_only=True):  # another reader: a notebook, a BI tool
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


@pytest.fixture
def store_path(tmp_path):
    path = tmp_path / "feedback.duckdb"
    FeedbackStore(path).ingest({"run_id": "setup", "stage": "test"}, *frames("s", 4))
    return path


def hold(script: str, path, seconds: float, project_root) -> subprocess.Popen:
    holder = subprocess.Popen(
        [sys.executable, "-c", script, str(path), str(seconds)], cwd=project_root, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "held"
    return holder


def stats(path, project_root) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "rlhf.cli", "store", "stats", "--store", str(path)],
        cwd=project_root,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return done, time.monotonic() - started


def test_stats_answers_once_a_short_write_ends(store_path, project_root):
    writer = hold(HOLD_A_WRITE, store_path, 3, project_root)
    done, _ = stats(store_path, project_root)
    writer.wait(timeout=30)
    assert done.returncode == 0, done.stderr
    assert "comparisons      12" in done.stdout  # 4 prompts of 3 responses: 3 pairs each


def test_a_read_gives_up_on_a_long_write_after_its_bound_with_one_line_naming_the_writer(store_path, project_root):
    writer = hold(HOLD_A_WRITE, store_path, 120, project_root)
    started = time.monotonic()
    try:
        with pytest.raises(StoreError) as refused:
            FeedbackStore(store_path, lock_timeout_s=2).counts()
    finally:
        writer.kill()
        writer.wait()
    assert 2 <= time.monotonic() - started < 10
    assert str(refused.value) == (
        f"{store_path}: cannot open the store: another process (PID {writer.pid}) is writing it; "
        "try again when it is done (waited 2 s)"
    )


def test_stats_does_not_queue_behind_the_writers_lock(store_path, project_root):
    """Before, every read took the writers' file lock: it waited as long as any writer held or queued."""
    holder = hold(HOLD_THE_LOCK, store_path, 120, project_root)
    try:
        done, seconds = stats(store_path, project_root)
    finally:
        holder.kill()
        holder.wait()
    assert done.returncode == 0, done.stderr
    assert seconds < 30  # it never waited for the lock (held 120 s; a read waits up to 60 s)


def test_stats_answers_while_another_process_reads_the_file(store_path, project_root):
    """Before, a read opened the file read-write (to run the migration check): it could not open
    while another process read the store, and retried until that reader closed."""
    reader = hold(HOLD_A_READ, store_path, 120, project_root)
    try:
        done, seconds = stats(store_path, project_root)
    finally:
        reader.kill()
        reader.wait()
    assert done.returncode == 0, done.stderr
    assert seconds < 30  # the other reader holds the file 120 s


def test_the_schema_is_checked_once_per_store_not_on_every_read(store_path):
    store = FeedbackStore(store_path)
    before = store.counts()
    con = duckdb.connect(str(store_path))
    con.execute("UPDATE schema_version SET version = 99")
    con.close()
    assert store.counts() == before  # checked when it first opened the file; reads run no migration
    with pytest.raises(StoreError, match=r"schema version 99 is newer than this code reads"):
        FeedbackStore(store_path).counts()


def test_threads_of_one_process_read_and_write_one_file_in_turn(tmp_path):
    """DuckDB refuses a read-only and a read-write connection to one file in one process ("different
    configuration"): the store's per-file lock makes a page's readers and its writer take turns."""
    path = tmp_path / "feedback.duckdb"
    prompts, responses, _ = frames("q", 20)
    queue = pd.DataFrame(
        [queue_item(f"qp{i}", [f"qp{i}r{j}" for j in range(3)], "human") for i in range(20)], columns=QUEUE_COLUMNS
    )
    FeedbackStore(path).ingest(
        {"run_id": "s", "stage": "test"}, prompts, responses, pd.DataFrame(columns=RANKING_COLUMNS), queue
    )
    errors = []

    def annotate():
        store = FeedbackStore(path)
        try:
            while (item := store.next_item("alice")) is not None:
                ids = [r["response_id"] for r in item["responses"]]
                store.record_human_ranking("alice", item["item_id"], {r: n + 1 for n, r in enumerate(ids)}, [], "run")
        except Exception as error:  # the test reports any
            errors.append(error)

    def watch(stop: threading.Event):
        store = FeedbackStore(path)
        try:
            while not stop.is_set():
                store.counts(), store.waiting_items(), store.annotator_progress()
        except Exception as error:
            errors.append(error)

    stop = threading.Event()
    watchers = [threading.Thread(target=watch, args=(stop,)) for _ in range(2)]
    for watcher in watchers:
        watcher.start()
    annotate()
    stop.set()
    for watcher in watchers:
        watcher.join(timeout=60)
    assert errors == []
    assert FeedbackStore(path).counts()["comparisons"] == 20 * 3


@pytest.mark.parametrize("role, as_messages", [("user", chat.as_conversation), ("assistant", chat.assistant_turns)])
def test_one_turn_messages_are_the_bytes_chat_to_json_writes(role, as_messages):
    texts = ["plain", 'a "quote", a \\ and a /', "\x00\x01\x1f\x7f\n\t\r\b\f", "ünï 中文 😀 \u2028\u2029", "\ud800", ""]
    assert one_turn_json(role, texts, as_messages) == [chat.to_json(as_messages(t)) for t in texts]
    messages = [{"role": "user", "content": "a list of messages takes chat's own path"}]
    assert one_turn_json(role, [messages], as_messages) == [chat.to_json(as_messages(messages))]


@pytest.mark.parametrize("kind", ["a text file", "a directory"])
def test_a_store_path_that_is_no_duckdb_file_is_refused_at_once(tmp_path, kind):
    """A mistyped --store (another file, a folder) is not a busy store: no waiting for a lock."""
    from rlhf.cli import main

    wrong = tmp_path / "notes.duckdb"
    wrong.mkdir() if kind == "a directory" else wrong.write_text("not a database\n")
    rankings = tmp_path / "rankings.csv"
    rankings.write_text("prompt,response,rank\nhi,a,1\nhi,b,2\n")
    for action in (["stats"], ["query", "SELECT 1"], ["import", str(rankings), "--format", "csv"]):
        started = time.monotonic()
        with pytest.raises(StoreError, match=rf"{wrong}: (a directory|not a DuckDB database file), not a feedback"):
            FeedbackStore(wrong).counts() if action == ["stats"] else FeedbackStore(wrong).query("SELECT 1")
        assert main(["store", "--store", str(wrong), *action]) == 2
        assert time.monotonic() - started < 20.0, action  # a lock's wait was 30 s (import) or 60 s
    assert wrong.is_dir() or wrong.read_text() == "not a database\n"  # left as it was

"""Opening the store's file: a writer under the cross-process lock, a reader without it.

DuckDB lets one process open a file read-write, and while it does no other process can open it at
all, not even read-only ("Could not set lock on file"); several read-only opens are fine, and inside
one process a read-only and a read-write open of one file refuse each other ("different
configuration"). So:

- a writer takes the store's file lock (`<store>.lock`, which queues the writers of every process),
  then this process's lock of the file, then opens read-write, retrying while a process outside the
  file lock (the DuckDB CLI, a reader) holds DuckDB's own lock;
- a reader opens read-only without the file lock when no write is open, so readers never wait for
  a lock that a process holds without writing, and never block one another across processes;
  while a write is open, it waits for the file lock as every read did before (filelock polls: no
  queue, so a stream of back-to-back writes can keep it out), for at most `wait_s`, then gives up
  with one line naming the writer.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import filelock
from filelock import FileLock

from rlhf.errors import StoreError

# One lock per file in this process: threads of one process take turns (a read-only and a
# read-write connection of one file cannot coexist in a process). Re-entrant, and a read in a thread
# that already writes the file opens it read-write like the write does.
_FILES: dict[str, threading.RLock] = {}
_FILES_GUARD = threading.Lock()
_writing = threading.local()

READ_POLL_S = 0.25  # a reader retries at least this often while a process outside the lock holds the file


def _file_lock(path: Path) -> threading.RLock:
    with _FILES_GUARD:
        return _FILES.setdefault(str(path.resolve()), threading.RLock())


# DuckDB's IOException also means a file no retry will open; these words say which.
NOT_A_STORE = ("not a valid DuckDB database", "Is a directory")


def _open(path: Path, read_only: bool) -> duckdb.DuckDBPyConnection:
    """A connection; StoreError at once when `path` is no DuckDB file (a lock is retried by the caller)."""
    try:
        return duckdb.connect(str(path), read_only=read_only)
    except duckdb.IOException as error:
        if any(words in str(error) for words in NOT_A_STORE):
            kind = "a directory" if path.is_dir() else "not a DuckDB database file"
            raise StoreError(f"{path}: {kind}, not a feedback store") from None
        raise


def _writing_here(path: Path) -> bool:
    return getattr(_writing, "depth", {}).get(str(path.resolve()), 0) > 0


@contextlib.contextmanager
def _marked_writing(path: Path) -> Iterator[None]:
    depth = _writing.__dict__.setdefault("depth", {})
    key = str(path.resolve())
    depth[key] = depth.get(key, 0) + 1
    try:
        yield
    finally:
        depth[key] -= 1


@contextlib.contextmanager
def open_writer(path: Path, lock: FileLock, retries: int) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-write connection, held under the store's file lock (filelock.Timeout past its timeout)
    and retried `retries` times, with backoff, while another process holds DuckDB's own lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with lock, _file_lock(path), _marked_writing(path):
        for attempt in range(retries):
            try:
                con = _open(path, read_only=False)
                break
            except duckdb.IOException as error:  # another process holds DuckDB's own file lock
                if attempt == retries - 1:
                    raise StoreError(f"{path}: cannot open the store: {error}") from None
                time.sleep(min(0.05 * 2**attempt, 2.0))
        try:
            yield con
        finally:
            con.close()


@contextlib.contextmanager
def open_reader(path: Path, lock: FileLock, wait_s: float) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-only connection. Without the store's file lock when no write is open (the common
    case); while one is, the read waits for the lock as every read did before, at most `wait_s`,
    then StoreError "cannot open the store" (what rlhf.annotation.journal.is_busy reads as busy)
    naming the writer."""
    deadline = time.monotonic() + wait_s
    with _in_process(path, wait_s):
        read_only = not _writing_here(path)
        try:
            con = _open(path, read_only=read_only)
        except duckdb.IOException as error:  # a write (another process) has the file open
            _refuse_removed(path)
            holder, con = _holder(error), None
        if con is not None:
            try:
                yield con
            finally:
                con.close()
            return
    try:  # writers take the file lock, then this process's: the same order here
        lock.acquire(timeout=max(deadline - time.monotonic(), 0.0))
    except filelock.Timeout:
        raise StoreError(f"{path}: cannot open the store: {holder} (waited {wait_s:g} s)") from None
    try:
        with _in_process(path, max(deadline - time.monotonic(), 0.0)):
            con = _open_until(path, read_only, deadline, wait_s)
            try:
                yield con
            finally:
                con.close()
    finally:
        lock.release()


@contextlib.contextmanager
def _in_process(path: Path, wait_s: float) -> Iterator[None]:
    in_process = _file_lock(path)
    if not in_process.acquire(timeout=wait_s):
        raise StoreError(f"{path}: cannot open the store: a write in this process holds it (waited {wait_s:g} s)")
    try:
        yield
    finally:
        in_process.release()


def _open_until(path: Path, read_only: bool, deadline: float, wait_s: float) -> duckdb.DuckDBPyConnection:
    """Open under the file lock, retried until `deadline` while a process outside the lock (the
    DuckDB CLI) holds the file."""
    attempt = 0
    while True:
        try:
            return _open(path, read_only=read_only)
        except duckdb.IOException as error:
            _refuse_removed(path)
            left = deadline - time.monotonic()
            if left <= 0:
                raise StoreError(f"{path}: cannot open the store: {_holder(error)} (waited {wait_s:g} s)") from None
            time.sleep(min(0.02 * 2**attempt, READ_POLL_S, left))
            attempt += 1


def _refuse_removed(path: Path) -> None:
    if not path.is_file():
        raise StoreError(f"{path}: no store here (it was removed)") from None


def _holder(error: duckdb.IOException) -> str:
    """Who holds the file, in a few words (DuckDB's message names the process and a docs link)."""
    pid = re.search(r"\(PID (\d+)\)", str(error))
    if pid:
        return f"another process (PID {pid.group(1)}) is writing it; try again when it is done"
    return str(error).strip().splitlines()[0]

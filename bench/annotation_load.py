"""The ranking page under 8 annotators at once, with and without a pipeline stage holding the store.

    python bench/annotation_load.py [--clients 8] [--seconds 60] [--lock-seconds 70] [--items 3000]

For each configuration (no lock, then the store's lock held): a fresh store of `--items` queued
items (3 responses each), the page served by `rlhf annotate serve` in its own process on
127.0.0.1 (default limits), and `--clients` annotators that each load the next item and submit a
ranking of it, as fast as the page answers, for `--seconds`. A 503 or 429 is waited out as its
Retry-After says, as the page's script does. With the lock, another process holds the store's
transaction (as a stage does: its file lock and the DuckDB file) from just before the annotators
start, for `--lock-seconds`. Afterwards the bench waits for the page to drain its journal, then
counts every acknowledged ranking in the store: `lost` is those acknowledged and not there.

One JSON line per configuration: submits/s (acknowledged), p50/p99 of every request and of the
submits alone (ms), the answers by status, lost, the seconds the drain took after the lock went,
the load average before and after, and the machine (rlhf/machine.py).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx
import numpy as np
import pandas as pd

from rlhf.machine import machine
from rlhf.ranking import RANKING_COLUMNS
from rlhf.store import FeedbackStore
from rlhf.text import content_id

RESPONSES_PER_ITEM = 3
RESPONSE_COLUMNS = ["response_id", "prompt_id", "sample_index", "response", "policy_checkpoint", "sampling"]
HOLD_THE_STORE = """
import sys, time
from rlhf.store import FeedbackStore
with FeedbackStore(sys.argv[1]).transaction():  # what a stage holds while it writes
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def queued_store(path: Path, items: int) -> FeedbackStore:
    """A store with `items` queued items of RESPONSES_PER_ITEM responses each."""
    store = FeedbackStore(path)
    prompt_ids = [f"p{i:05d}" for i in range(items)]
    prompts = pd.DataFrame(
        {
            "prompt_id": prompt_ids,
            "prompt": [f"question {i} ?" for i in range(items)],
            "topic": None,
            "split": "train",
            "source": "bench",
        }
    )
    responses = pd.DataFrame(
        [
            (f"{p}-r{j}", p, j, f"answer {j} to {p}", "bench", "{}")
            for p in prompt_ids
            for j in range(RESPONSES_PER_ITEM)
        ],
        columns=RESPONSE_COLUMNS,
    )
    run = {"run_id": "bench", "stage": "bench"}
    store.ingest(run, prompts, responses, pd.DataFrame(columns=RANKING_COLUMNS))
    ids = [[f"{p}-r{j}" for j in range(RESPONSES_PER_ITEM)] for p in prompt_ids]
    queue = pd.DataFrame(
        [(content_id(p, *i), p, json.dumps(i), "bench") for p, i in zip(prompt_ids, ids)],
        columns=["item_id", "prompt_id", "response_ids", "reason"],
    )
    store.enqueue(run, queue)
    return store


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start(tree: Path, arguments: list[str], port: int) -> subprocess.Popen:
    """`python -m rlhf.cli ARGUMENTS --port PORT` from `tree` (first on the path); returns once it answers."""
    server = subprocess.Popen(
        [sys.executable, "-m", "rlhf.cli", *arguments, "--port", str(port)],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 180
    while True:
        if server.poll() is not None:
            raise SystemExit(f"{tree}: {' '.join(arguments[:2])} did not start: {server.stderr.read()[-2000:]}")
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
            return server
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise SystemExit(f"{tree}: {' '.join(arguments[:2])} did not start in 180 s") from None
            time.sleep(0.2)


def start_page(store_path: Path, tokens_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    arguments = [
        "annotate",
        "--store",
        str(store_path),
        "serve",
        "--tokens",
        str(tokens_path),
        "--params",
        "/nonexistent-params.yaml",
    ]
    return start(ROOT, arguments, port), f"http://127.0.0.1:{port}"


class Annotator:
    """One person at full speed: next item, rank it, submit; every request timed, every status counted."""

    def __init__(self, address: str, token: str, name: str):
        self.client = httpx.Client(base_url=address, headers={"Authorization": f"Bearer {token}"}, timeout=60)
        self.name = name
        self.latencies: list[tuple[str, float]] = []
        self.statuses: Counter = Counter()
        self.acknowledged: list[str] = []
        self.exhausted = False

    def call(self, method: str, path: str, **kwargs) -> httpx.Response:
        """The request, retried after a 429/503 as Retry-After says (the page's script does)."""
        while True:
            started = time.perf_counter()
            answer = self.client.request(method, path, **kwargs)
            self.latencies.append((path, time.perf_counter() - started))
            self.statuses[answer.status_code] += 1
            if answer.status_code not in (429, 503):
                return answer
            time.sleep(min(10.0, float(answer.headers.get("retry-after", "2"))))

    def run(self, until: float) -> None:
        while time.monotonic() < until:
            item = self.call("GET", "/api/next").json().get("item")
            if item is None:
                self.exhausted = True
                return
            order = [r["response_id"] for r in item["responses"]][::-1]
            body = {"item_id": item["item_id"], "order": order, "tied_with_above": [False] * len(order)}
            answer = self.call("POST", "/api/submit", json=body)
            if answer.status_code == 200 and answer.json().get("saved"):
                self.acknowledged.append(item["item_id"])


def stored_rankings(store: FeedbackStore) -> set[tuple[str, str]]:
    rows = store.query("SELECT DISTINCT annotator, item_id FROM annotation_events WHERE action = 'ranked'")
    return set(zip(rows["annotator"], rows["item_id"]))


def percentile_ms(seconds: list[float], q: float) -> float | None:
    return round(float(np.percentile(seconds, q)) * 1000, 1) if seconds else None


def measure(
    workdir: Path, clients: int, seconds: float, lock_seconds: float, items: int, drain_timeout_s: float = 600
) -> dict:
    """One configuration (the module docstring); the drain is waited for at most `drain_timeout_s`."""
    store = queued_store(workdir / "feedback.duckdb", items)
    tokens = {f"bench-token-{i:02d}-0123456789": f"annotator-{i}" for i in range(clients)}
    (workdir / "annotators.json").write_text(json.dumps(tokens))
    load_before = os.getloadavg()[0]
    server, address = start_page(store.path, workdir / "annotators.json")
    holder = None
    try:
        annotators = [Annotator(address, token, name) for token, name in tokens.items()]
        for annotator in annotators:  # signed in once while the store is free
            annotator.call("GET", "/api/guidelines")
            annotator.latencies.clear()
        if lock_seconds:
            holder = subprocess.Popen(
                [sys.executable, "-c", HOLD_THE_STORE, str(store.path), str(lock_seconds)],
                stdout=subprocess.PIPE,
                text=True,
            )
            assert holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        threads = [threading.Thread(target=a.run, args=(started + seconds,)) for a in annotators]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - started
        if holder is not None:
            holder.wait(timeout=lock_seconds + 60)
        released = time.monotonic()
        acknowledged = {(a.name, item_id) for a in annotators for item_id in a.acknowledged}
        deadline = released + drain_timeout_s
        while not acknowledged <= (found := stored_rankings(store)) and time.monotonic() < deadline:
            time.sleep(1.0)
        drain_s = time.monotonic() - released
    finally:
        server.terminate()
        server.wait(timeout=60)
        if holder is not None and holder.poll() is None:
            holder.kill()
    found = stored_rankings(store)
    every = [s for a in annotators for _, s in a.latencies]
    submits = [s for a in annotators for path, s in a.latencies if path == "/api/submit"]
    statuses = sum((a.statuses for a in annotators), Counter())
    return {
        "bench": "annotation_load",
        "clients": clients,
        "seconds": round(elapsed, 1),
        "lock_held_s": lock_seconds,
        "items": items,
        "acknowledged": len(acknowledged),
        "submits_per_s": round(len(acknowledged) / elapsed, 1),
        "request_p50_ms": percentile_ms(every, 50),
        "request_p99_ms": percentile_ms(every, 99),
        "submit_p50_ms": percentile_ms(submits, 50),
        "submit_p99_ms": percentile_ms(submits, 99),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "answered_5xx": sum(v for k, v in statuses.items() if k >= 500),
        "answered_500": statuses.get(500, 0),
        "lost": len(acknowledged - found),
        "drain_after_release_s": round(drain_s, 1),
        "queue_exhausted": any(a.exhausted for a in annotators),
        "load_1m_before": round(load_before, 2),
        "load_1m_after": round(os.getloadavg()[0], 2),
        "machine": machine(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the annotators submit")
    parser.add_argument("--lock-seconds", type=float, default=70.0, help="how long the stage holds the store")
    parser.add_argument("--items", type=int, default=3000, help="queued items (everyone may rank each)")
    args = parser.parse_args()
    for lock_seconds in (0.0, args.lock_seconds):
        with tempfile.TemporaryDirectory() as workdir:
            print(json.dumps(measure(Path(workdir), args.clients, args.seconds, lock_seconds, args.items)), flush=True)


if __name__ == "__main__":
    main()

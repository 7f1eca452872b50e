"""The policy server under load (issue 30 item 4): 16 concurrent clients for 30 s record every exchange
and every feedback exactly once, and a server killed mid-load (SIGKILL, a real `rlhf serve policy`
process) loses none that it acknowledged. Loopback only; each client's requests are bounded by a timeout."""

import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from tests.serving.conftest import ask, bearer
from tests.support.servers import free_port, running

pytestmark = pytest.mark.timeout(300)

CLIENTS = 16
PROMPTS = ["tell me about owls . answer :", "tell me about cats . answer :", "what is rain ? answer :"]


class Tally:
    """What the server acknowledged (200) and every other answer, kept by the client threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.exchanges: list[tuple[str, str]] = []  # (exchange id, client)
        self.feedback: list[tuple[str, str]] = []  # (exchange id, kind)
        self.other: list[str] = []

    def add(self, where: list, item) -> None:
        with self.lock:
            where.append(item)


def feedback_for(index: int, exchange: dict) -> dict:
    """One feedback of each kind in turn; a choice where two answers were shown."""
    kind = index % 4
    if len(exchange["choices"]) == 2:
        return {"exchange_id": exchange["id"], "choice": index % 2}
    if kind == 0:
        return {"exchange_id": exchange["id"], "thumbs": "up" if index % 3 else "down", "reason": f"r{index}"}
    if kind == 1:
        return {"exchange_id": exchange["id"], "rating": 1 + index % 5}
    if kind == 2:
        return {"exchange_id": exchange["id"], "edited": f"a better answer number {index}"}
    return {"exchange_id": exchange["id"], "thumbs": "down"}


def client_loop(address: str, name: str, token: str, tally: Tally, until: threading.Event, resend_every: int = 0):
    """Ask, then give feedback on the answer, until `until` is set. With `resend_every`, every so
    many feedbacks are sent twice, as a client that lost the first answer would (stored once)."""
    with httpx.Client(timeout=20) as client:
        index = 0
        while not until.is_set():
            index += 1
            try:
                answer = ask(client, address, token, PROMPTS[index % 3], n=2 if index % 5 == 0 else 1)
            except httpx.HTTPError as error:
                tally.add(tally.other, f"ask: {type(error).__name__}")
                continue
            if answer.status_code != 200:
                tally.add(tally.other, f"ask: {answer.status_code} {answer.text[:100]}")
                continue
            exchange = answer.json()
            tally.add(tally.exchanges, (exchange["id"], name))
            body = feedback_for(index, exchange)
            kind = next(k for k in ("thumbs", "rating", "edited", "choice") if k in body)
            for _ in range(2 if resend_every and index % resend_every == 0 else 1):
                try:
                    given = client.post(f"{address}/v1/feedback", json=body, headers=bearer(token))
                except httpx.HTTPError as error:
                    tally.add(tally.other, f"feedback: {type(error).__name__}")
                    break
                if given.status_code != 200:
                    tally.add(tally.other, f"feedback: {given.status_code} {given.text[:100]}")
                    break
            else:
                tally.add(tally.feedback, (exchange["id"], {"edited": "edit"}.get(kind, kind)))


def run_clients(address: str, tokens: dict[str, str], seconds: float, kill=None, resend_every: int = 0) -> Tally:
    """CLIENTS threads (tokens shared round-robin) for `seconds`; `kill()` runs halfway, under load."""
    tally, until = Tally(), threading.Event()
    names = list(tokens)
    threads = [
        threading.Thread(
            target=client_loop,
            args=(address, names[i % len(names)], tokens[names[i % len(names)]], tally, until, resend_every),
        )
        for i in range(CLIENTS)
    ]
    for thread in threads:
        thread.start()
    if kill is not None:
        time.sleep(seconds / 2)
        kill()
        time.sleep(seconds / 2)
    else:
        time.sleep(seconds)
    until.set()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a client did not finish"
    return tally


def stored(store) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    exchanges = store.query("SELECT exchange_id, client FROM exchanges").itertuples(index=False, name=None)
    feedback = store.query("SELECT exchange_id, kind FROM exchange_feedback").itertuples(index=False, name=None)
    return list(exchanges), list(feedback)


def test_16_clients_for_30_s_record_every_exchange_and_feedback_exactly_once(local_policy, store, tokens):
    from rlhf.serving.policy_server import create_app, policy_server
    from tests.serving.conftest import LIMITS

    app, port = create_app(local_policy, store, LIMITS), free_port()
    with running(policy_server(app, "127.0.0.1", port), port) as address:
        started = time.perf_counter()
        tally = run_clients(address, tokens, seconds=30, resend_every=7)
        elapsed = time.perf_counter() - started
        rewritten = app.state.recorder.rewritten_batches
    exchanges, feedback = stored(store)
    assert tally.other == []  # no refusal, no timeout: every request was acknowledged
    assert rewritten == 0  # every batch of writes committed as it was (no job failed and rolled it back)
    assert len(tally.exchanges) > CLIENTS  # each client went round more than once
    assert sorted(exchanges) == sorted(tally.exchanges)  # each acknowledged exchange once, with its client
    assert sorted(feedback) == sorted(tally.feedback)  # each feedback once, resent ones too
    pairs = store.query("SELECT count(*) AS n FROM comparisons WHERE judge = 'deployed'")["n"][0]
    assert pairs == sum(kind in ("edit", "choice") for _, kind in tally.feedback)
    print(f"\n{len(exchanges)} exchanges, {len(feedback)} feedback from {CLIENTS} clients in {elapsed:.1f} s")


def test_a_killed_server_loses_no_exchange_or_feedback_it_acknowledged(tiny_checkpoints, store, tokens, tmp_path):
    port = free_port()
    command = [sys.executable, "-m", "rlhf.cli", "serve", "policy", "--checkpoint", str(tiny_checkpoints[0])]
    command += ["--store", str(store.path), "--port", str(port), "--rate-limit", "0", "--device", "cpu"]
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        address = f"http://127.0.0.1:{port}"
        deadline = time.time() + 60
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()
            assert time.time() < deadline, "the server did not start"
            try:
                if httpx.get(f"{address}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        tally = run_clients(address, tokens, seconds=8, kill=lambda: server.send_signal(signal.SIGKILL))
    finally:
        server.kill()
        server.wait(timeout=30)
    assert server.returncode == -signal.SIGKILL
    exchanges, feedback = stored(store)  # the store opens cleanly after the kill (DuckDB replays its log)
    assert tally.exchanges and tally.other  # it answered before the kill and refused connections after
    assert set(tally.exchanges) <= set(exchanges)  # nothing acknowledged is lost
    assert set(tally.feedback) <= set(feedback)
    assert len(set(exchanges)) == len(exchanges) and len(set(feedback)) == len(feedback)  # nothing twice

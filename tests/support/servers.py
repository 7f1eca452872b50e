"""The reward server on a free loopback port, and raw HTTP requests for the hardening tests."""

import contextlib
import json
import socket
import threading
import time

import uvicorn
from fastapi import FastAPI

from rlhf.rewards.server import reward_server


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def running(server: uvicorn.Server, port: int):
    """`server` (uvicorn, bound to 127.0.0.1:`port`) run in a thread until the block ends; yields its address."""
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started:
        assert time.time() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextlib.contextmanager
def serving(app: FastAPI):
    """`app` served by the reward server's uvicorn settings on a free port of 127.0.0.1; yields its address."""
    port = free_port()
    with running(reward_server(app, "127.0.0.1", port), port) as address:
        yield address


def raw_request(port: int, head: bytes, chunks, timeout_s: float = 5.0) -> tuple[bytes, float]:
    """Send `head`, then `chunks` until the server answers; returns (the answer, seconds until it came)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        start = time.perf_counter()
        sock.sendall(head)
        sock.setblocking(False)
        answer = b""
        for chunk in chunks:
            try:
                answer += sock.recv(65536)
                break
            except BlockingIOError:
                pass
            try:
                sock.sendall(chunk)
            except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                break
        sock.settimeout(timeout_s)
        with contextlib.suppress(ConnectionResetError, TimeoutError):
            while b"\r\n\r\n" not in answer or not answer.endswith(b"}"):
                more = sock.recv(65536)
                if not more:
                    break
                answer += more
        return answer, time.perf_counter() - start


def status_and_detail(answer: bytes) -> tuple[int, str]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(body)["detail"]

"""A tiny policy served from a real uvicorn on 127.0.0.1, over a real DuckDB store with two clients' tokens."""

import contextlib

import pytest

from rlhf.annotation.annotators import add_annotator
from rlhf.serving.limits import ServingLimits
from rlhf.store import FeedbackStore
from tests.support.servers import free_port, running

# Small limits, each cheap to reach; no rate limit (the load test's clients go as fast as they can).
LIMITS = ServingLimits(max_body_bytes=64 * 1024, max_messages=8, max_chars=2_000, max_tokens=16, rate_limit=0)


@pytest.fixture(scope="session")
def local_policy(tiny_checkpoints):
    from rlhf.serving.backends import LocalPolicy

    return LocalPolicy(tiny_checkpoints[0], device="cpu")


@pytest.fixture
def store(tmp_path):
    return FeedbackStore(tmp_path / "feedback.duckdb")


@pytest.fixture
def tokens(store):
    """{name: token} of two clients, as `rlhf annotate add-annotator` makes them."""
    return {name: add_annotator(store, name) for name in ("alice", "bob")}


@contextlib.contextmanager
def serving(backend, store, **options):
    """The policy server over `backend` and `store` on a free loopback port; yields its address."""
    from rlhf.serving.policy_server import create_app, policy_server

    options.setdefault("limits", LIMITS)
    port = free_port()
    with running(policy_server(create_app(backend, store, **options), "127.0.0.1", port), port) as address:
        yield address


@pytest.fixture
def server(local_policy, store, tokens):
    with serving(local_policy, store) as address:
        yield address


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def ask(client, address: str, token: str, content: str = "tell me about owls . answer :", **fields):
    """POST one chat completion; the httpx response."""
    body = {"model": "policy", "messages": [{"role": "user", "content": content}], "max_tokens": 8, **fields}
    return client.post(f"{address}/v1/chat/completions", json=body, headers=bearer(token))

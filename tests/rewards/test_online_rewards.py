"""Reward sources for online RL (rlhf.rewards): rules, a weighted sum, and a real reward server on
127.0.0.1 (ours, and small flaky ones of the test's own) behind the HTTP client."""

import asyncio
import socket
import time

import httpx
import pytest
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from rlhf import chat
from rlhf.annotation.annotators import hash_token
from rlhf.config import ContainsAny, ExcludesAll, MentionsTopic, WordCount
from rlhf.policy_optimization.rollout import RewardScorer
from rlhf.pretrained import load_tokenizer
from rlhf.reward_models.ensemble import load_reward_model
from rlhf.rewards.combine import WeightedReward
from rlhf.rewards.remote import TOKEN_ENV, RemoteReward, RewardEndpointError, request_body
from rlhf.rewards.rules import RulesReward
from rlhf.rewards.server import ROUTE, load_reward_app
from rlhf.scoring import exchange_texts
from tests.support.servers import serving

PROMPTS = [
    "Tell me about cats",
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What do owls eat?"},
        {"role": "assistant", "content": "Mice, mostly."},
        {"role": "user", "content": "And at night?"},
    ],
    "Share a tip about rivers",
]
RESPONSES = ["Cats sleep a lot, please pet them.", "Owls hunt mice at night.", "Rivers flow downhill"]


# --- the rules as a verifiable reward, and the weighted sum --------------------------------------


PRINCIPLES = [
    ContainsAny(kind="contains_any", name="polite", words=["please", "thank you"], weight=1.0),
    ExcludesAll(kind="excludes_all", name="calm", words=["stupid"], weight=0.5),
    MentionsTopic(kind="mentions_topic", name="on_topic", weight=2.0),
    WordCount(kind="word_count", name="short", min=2, max=6, weight=0.25),
]


def test_rules_reward_on_hand_made_responses():
    reward = RulesReward(PRINCIPLES)
    prompts = ["Tell me about cats"] * 4  # content words: "cats"
    responses = [
        "Cats purr, please listen.",  # polite, calm, on topic, 4 words: 1 + 0.5 + 2 + 0.25
        "Dogs bark a lot and loudly outside today.",  # calm only (8 words): 0.5
        "Stupid cats",  # on topic, 2 words, not calm: 2 + 0.25
        "Thank you for asking about cats, stupid question really",  # polite, on topic, 9 words: 1 + 2
    ]
    assert reward(prompts, responses).tolist() == [3.75, 0.5, 2.25, 3.0]


def test_rules_reward_reads_the_topic_and_the_last_user_turn():
    conversation = [
        {"role": "user", "content": "Tell me about cats"},
        {"role": "assistant", "content": "They purr."},
        {"role": "user", "content": "What about owls?"},
    ]
    on_topic = PRINCIPLES[2:3]
    assert RulesReward(on_topic)([conversation], ["Owls hoot."]).tolist() == [2.0]  # the newest turn: owls
    topics = {'[{"role":"user","content":"Tell me about rivers"}]': "rivers"}
    assert RulesReward(on_topic, topics)(["Tell me about rivers"], ["Water runs."]).tolist() == [0.0]
    assert RulesReward(on_topic, topics)(["Tell me about rivers"], ["Rivers run."]).tolist() == [2.0]


def test_weighted_sum_of_sources():
    def lengths(prompts, responses):
        return torch.tensor([float(len(r)) for r in responses])

    rules = RulesReward(PRINCIPLES)
    combined = WeightedReward([("rules", 2.0, rules), ("length", -0.1, lengths)])
    prompts, responses = (
        ["Tell me about cats"] * 2,
        ["Cats purr, please listen.", "Dogs bark a lot and loudly outside today."],
    )
    expected = 2.0 * rules(prompts, responses) - 0.1 * lengths(prompts, responses)
    assert torch.allclose(combined(prompts, responses), expected)
    assert combined.last_means == pytest.approx({"rules": (3.75 + 0.5) / 2, "length": (25 + 41) / 2})
    with pytest.raises(ValueError):
        WeightedReward([])


# --- our reward model behind HTTP ----------------------------------------------------------------


@pytest.fixture(scope="module")
def reward_model_server(tiny_checkpoints):
    _, reward_dir = tiny_checkpoints
    with serving(load_reward_app(reward_dir, device="cpu", batch_size=2)) as address:
        yield address, reward_dir


@pytest.fixture(scope="module")
def in_process_scores(reward_model_server):
    _, reward_dir = reward_model_server
    tokenizer = load_tokenizer(reward_dir)
    scorer = RewardScorer(load_reward_model(reward_dir, torch.device("cpu"), tokenizer.pad_token_id), tokenizer)
    return scorer(PROMPTS, RESPONSES)


def test_client_scores_equal_in_process_scores(reward_model_server, in_process_scores):
    address, _ = reward_model_server
    client = RemoteReward(address + ROUTE, batch_size=2, max_concurrency=2)  # two requests: 2 + 1 exchanges
    scores = client(PROMPTS, RESPONSES)
    client.close()
    assert scores.shape == (3,) and scores.dtype == torch.float32
    assert torch.allclose(scores, in_process_scores, atol=1e-5)
    assert len(set(scores.tolist())) == 3  # the exchanges really differ


def test_query_only_request_scores_the_texts_as_given(reward_model_server, in_process_scores):
    """An OpenRLHF trainer sends only rendered texts: they are scored as they are."""
    address, reward_dir = reward_model_server
    conversations = [chat.as_conversation(p) for p in PROMPTS]
    texts = exchange_texts(load_tokenizer(reward_dir), conversations, RESPONSES)  # what the reward model reads
    answer = httpx.post(address + ROUTE, json={"query": texts, "prompts": ["x"] * 3, "labels": [None] * 3})
    assert answer.status_code == 200
    assert answer.json()["rewards"] == answer.json()["scores"]
    assert torch.allclose(torch.tensor(answer.json()["rewards"]), in_process_scores, atol=1e-5)
    assert httpx.get(address + "/health").json() == {"status": "ok"}


def test_client_sends_the_token_in_rlhf_reward_token_to_a_tokened_server(
    reward_model_server, in_process_scores, monkeypatch
):
    _, reward_dir = reward_model_server
    token = "trainer-token-0123456789abcdef"
    hashes = {hash_token(token): "trainer"}
    with serving(load_reward_app(reward_dir, device="cpu", batch_size=2, token_hashes=hashes)) as address:
        url = address + ROUTE
        monkeypatch.delenv(TOKEN_ENV, raising=False)
        with pytest.raises(RewardEndpointError) as refused:
            RemoteReward(url, max_retries=3, backoff_s=0.01)(PROMPTS, RESPONSES)  # a 401 is not retried
        assert str(refused.value) == (
            f"train_policy.reward: {url} answered HTTP 401 (token refused) to no token "
            f"(RLHF_REWARD_TOKEN unset): set RLHF_REWARD_TOKEN to a token of `rlhf serve reward-token NAME "
            "--tokens FILE` for this server"
        )
        monkeypatch.setenv(TOKEN_ENV, "wrong-token-0123456789abcdef")
        with pytest.raises(RewardEndpointError, match=r"answered HTTP 401 .* to the token in RLHF_REWARD_TOKEN: set"):
            RemoteReward(url)(PROMPTS, RESPONSES)
        monkeypatch.setenv(TOKEN_ENV, token)
        client = RemoteReward(url, batch_size=2)
        assert torch.allclose(client(PROMPTS, RESPONSES), in_process_scores, atol=1e-5)
        client.close()


def test_request_body_follows_openrlhfs_keys():
    body = request_body([[{"role": "user", "content": "Hi"}]], ["Hello."])
    assert body == {
        "query": ["Hi Hello."],
        "prompts": ["Hi"],
        "prompt_messages": [[{"role": "user", "content": "Hi"}]],
        "responses": ["Hello."],
    }


def test_a_malformed_request_is_refused_naming_the_field(reward_model_server):
    address, _ = reward_model_server
    answer = httpx.post(
        address + ROUTE, json={"query": ["a"], "prompt_messages": [[{"role": "x"}]], "responses": ["b"]}
    )
    assert answer.status_code == 400 and "prompt_messages[0]" in answer.json()["detail"]


# --- retries: a flaky server of the test's own ---------------------------------------------------


def flaky_app(failures: list[str], reward: float = 0.5) -> tuple[FastAPI, list[float]]:
    """Answers each request with the next of `failures` ("429", "slow": sleeps past the client's
    timeout, "503", "400"), then with `reward` per query. Returns (app, arrival times)."""
    app, arrivals = FastAPI(), []

    @app.post(ROUTE)
    async def get_reward(request: Request):
        body = await request.json()
        arrivals.append(time.monotonic())
        step = failures[len(arrivals) - 1] if len(arrivals) <= len(failures) else "ok"
        if step == "429":
            return JSONResponse({"error": "slow down"}, status_code=429, headers={"Retry-After": "0.2"})
        if step == "slow":
            await asyncio.sleep(1.0)
        if step in ("503", "400"):
            return JSONResponse({"error": step}, status_code=int(step))
        return {"rewards": [reward] * len(body["query"])}

    return app, arrivals


def test_client_survives_a_429_and_a_timeout():
    app, arrivals = flaky_app(["429", "slow"])
    with serving(app) as address:
        client = RemoteReward(address + ROUTE, timeout_s=0.3, max_retries=2, backoff_s=0.05)
        scores = client(["Hi"] * 3, ["a", "b", "c"])
    assert scores.tolist() == [0.5] * 3
    assert len(arrivals) == 3  # the 429, the timed-out request, the answer
    assert arrivals[1] - arrivals[0] >= 0.2  # Retry-After was honoured


def test_client_fails_with_one_clear_error_after_the_last_retry():
    app, arrivals = flaky_app(["503"] * 10)
    with serving(app) as address:
        client = RemoteReward(address + ROUTE, timeout_s=2.0, max_retries=2, backoff_s=0.01)
        with pytest.raises(
            RewardEndpointError, match=rf"{address}{ROUTE} did not answer after 3 attempt\(s\): HTTP 503"
        ):
            client(["Hi"], ["a"])
    assert len(arrivals) == 3


def test_client_does_not_retry_a_client_error_or_accept_a_short_answer():
    app, arrivals = flaky_app(["400"])
    with serving(app) as address:
        client = RemoteReward(address + ROUTE, max_retries=3, backoff_s=0.01)
        with pytest.raises(RewardEndpointError, match="after 1 attempt"):
            client(["Hi"], ["a"])
        assert len(arrivals) == 1
        short = FastAPI()
        short.post(ROUTE)(lambda: {"rewards": [1.0]})
    with serving(short) as address, pytest.raises(RewardEndpointError, match="without 2 'rewards'"):
        RemoteReward(address + ROUTE)(["Hi", "Ho"], ["a", "b"])


def test_unreachable_server_names_the_url():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed once the probe goes: nothing listens there
    url = f"http://127.0.0.1:{port}{ROUTE}"
    with pytest.raises(RewardEndpointError, match=rf"{url} did not answer after 2 attempt\(s\): ConnectError"):
        RemoteReward(url, max_retries=1, backoff_s=0.01)(["Hi"], ["a"])


def test_rlhf_serve_reward_serves_the_model_for_other_tools(tiny_checkpoints, in_process_scores):
    """The command a user runs: `rlhf serve reward --model DIR --port N`, then any client of the convention."""
    import subprocess
    import sys

    _, reward_dir = tiny_checkpoints
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "rlhf.cli",
        "serve",
        "reward",
        "--model",
        str(reward_dir),
        "--port",
        str(port),
        "--device",
        "cpu",
    ]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert f"on http://127.0.0.1:{port}/get_reward" in server.stdout.readline()
        client = RemoteReward(f"http://127.0.0.1:{port}{ROUTE}", max_retries=30, backoff_s=0.2)  # while it loads
        assert torch.allclose(client(PROMPTS, RESPONSES), in_process_scores, atol=1e-5)
        client.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    missing = subprocess.run([*command[:6], "/nowhere/reward"], capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and missing.stderr.strip().splitlines() == [
        "rlhf: error: /nowhere/reward: no reward model directory here (run the pipeline first, or pass --model)"
    ]

"""The reward server under careless and hostile clients (issue 28): limits before work, never a 500
for bad input (a hypothesis fuzz run over the real server), bearer tokens stored hashed, loopback
unless told otherwise, no API docs unless asked. Each test runs a real uvicorn on 127.0.0.1."""

import contextlib
import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlhf.cli import main
from rlhf.http_auth import add_token, load_token_hashes
from rlhf.http_limits import Limits, RateLimit
from rlhf.rewards.server import ROUTE, create_app
from tests.support.servers import raw_request, status_and_detail
from tests.support.servers import serving as serving_address

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def tiny_reward(tiny_tokenizer):
    from transformers import GPT2ForSequenceClassification

    from tests.support.tiny import tiny_gpt2_config

    torch.manual_seed(0)
    return GPT2ForSequenceClassification(tiny_gpt2_config(tiny_tokenizer, num_labels=1)), tiny_tokenizer


@contextlib.contextmanager
def serving(app):
    """The reward server on a free loopback port (tests/rewards/test_online_rewards.py's), yielding the port."""
    with serving_address(app) as address:
        yield int(address.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def open_server(tiny_reward):
    """No tokens (loopback), small limits so each is cheap to reach, no rate limit."""
    model, tokenizer = tiny_reward
    limits = Limits(max_body_bytes=1_000_000, max_queries=8, max_chars=2_000, max_tokens=64, rate_limit=0)
    with serving(create_app(model, tokenizer, batch_size=4, limits=limits)) as port:
        yield f"http://127.0.0.1:{port}"


# --- 1. limits before work -----------------------------------------------------------------------


def test_a_50mb_body_is_refused_from_its_header_within_100ms_and_without_memory_growth(tiny_reward):
    model, tokenizer = tiny_reward
    hashes = {hashlib.sha256(b"a-token-of-the-trainer-0123").hexdigest(): "trainer"}
    with serving(create_app(model, tokenizer, token_hashes=hashes)) as port:  # default limits, tokens on
        process = psutil.Process()
        before = process.memory_info().rss
        head = (
            f"POST {ROUTE} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {50 * 1024 * 1024}\r\n\r\n"
        ).encode()  # no token either: the size is refused before any auth work
        chunk = b"x" * 65536
        answer, seconds = raw_request(port, head, (chunk for _ in range(800)))
        grown = process.memory_info().rss - before
    status, detail = status_and_detail(answer)
    assert status == 413 and seconds < 0.1, (status, seconds)
    assert detail == f"request body of {50 * 1024 * 1024} bytes is over the limit of 8388608 bytes (--max-body-bytes)"
    assert grown < 10 * 1024 * 1024


def test_a_streamed_body_is_refused_as_it_passes_the_limit(open_server):
    port = int(open_server.rsplit(":", 1)[1])
    head = f"POST {ROUTE} HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    piece = b"x" * 65536
    chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    process = psutil.Process()
    before = process.memory_info().rss
    answer, seconds = raw_request(port, head, (chunk for _ in range(800)))  # 50 MB if never refused
    assert status_and_detail(answer) == (
        413,
        "request body (streamed) is over the limit of 1000000 bytes (--max-body-bytes)",
    )
    assert seconds < 2 and process.memory_info().rss - before < 10 * 1024 * 1024


def test_queries_characters_and_tokens_per_request_are_bounded_by_flags(open_server):
    url = open_server + ROUTE
    too_many = httpx.post(url, json={"query": ["a b"] * 9})
    assert too_many.status_code == 413
    assert too_many.json()["detail"] == "query: 9 texts, over the limit of 8 (--max-queries)"
    too_long = httpx.post(url, json={"query": ["ok", "a" * 2001]})
    assert too_long.json()["detail"] == "query[1]: 2001 characters, over the limit of 2000 (--max-chars)"
    long_message = httpx.post(
        url, json={"query": ["x"], "prompt_messages": [[{"role": "user", "content": "b" * 2001}]], "responses": ["c"]}
    )
    assert long_message.status_code == 413 and "prompt_messages[0][0].content: 2001 characters" in long_message.text
    many_tokens = httpx.post(url, json={"query": [" ".join(["owls"] * 100)]})
    assert many_tokens.status_code == 413
    assert (
        many_tokens.json()["detail"].startswith("query[0]: ")
        and "over the limit of 64 (--max-tokens)" in many_tokens.text
    )
    assert httpx.post(url, json={"query": ["owls hunt at night"] * 8}).status_code == 200


def test_tokens_are_rate_limited_per_token_with_retry_after(tiny_reward):
    model, tokenizer = tiny_reward
    tokens = {"slow-token-0123456789": "slow", "fast-token-0123456789": "fast"}
    hashes = {hashlib.sha256(t.encode()).hexdigest(): name for t, name in tokens.items()}
    with serving(create_app(model, tokenizer, limits=Limits(rate_limit=1.0), token_hashes=hashes)) as port:
        url = f"http://127.0.0.1:{port}{ROUTE}"
        slow = {"Authorization": "Bearer slow-token-0123456789"}
        codes = [httpx.post(url, json={"query": ["hi there"]}, headers=slow).status_code for _ in range(3)]
        assert codes == [200, 200, 429]  # a burst of 2, then 1 a second
        refused = httpx.post(url, json={"query": ["hi there"]}, headers=slow)
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["detail"] == "over the rate limit of 1 requests/s per token (--rate-limit)"
        other = httpx.post(url, json={"query": ["hi"]}, headers={"Authorization": "Bearer fast-token-0123456789"})
        assert other.status_code == 200  # each token has its own bucket


def test_the_rate_limit_refills_at_its_rate():
    rate = RateLimit(per_s=2.0, burst=1)
    assert rate.wait_s("a", now=0.0) == 0 and rate.wait_s("a", now=0.1) == pytest.approx(0.4)
    assert rate.wait_s("a", now=0.5) == 0 and rate.wait_s("b", now=0.5) == 0
    assert RateLimit(per_s=0, burst=1).wait_s("a") == 0  # off


# --- 2. never a 500 for bad input ----------------------------------------------------------------


@pytest.mark.parametrize(
    "body, status, detail",
    [
        ({"query": []}, 422, "query: List should have at least 1 item after validation, not 0"),
        ({"query": [""]}, 422, "query[0]: empty; send the whole exchange as the model reads it"),
        ({"query": ["  "]}, 422, "query[0]: empty; send the whole exchange as the model reads it"),
        ('{"query": ["\\ud800 owls"]}', 422, "query[0]: holds a lone surrogate (not valid Unicode text)"),
        ({"query": "owls"}, 422, "query: Input should be a valid list"),
        ({"query": [1, None]}, 422, "query.0: Input should be a valid string; query.1: Input should be a valid string"),
        ({}, 422, "query: Field required"),
        ([], 422, "body: Input should be a valid dictionary or object to extract fields from"),
        ("{not json", 422, "1: JSON decode error"),
        ({"query": ["a"], "prompt_messages": [5], "responses": ["b"]}, 400, "prompt_messages[0]: expected a string"),
        ({"query": ["a"], "prompt_messages": [[]], "responses": ["b"]}, 400, "prompt_messages[0]: expected a string"),
        ({"query": ["a", "b"], "prompt_messages": ["p"], "responses": ["b"]}, 400, "must be lists of the same length"),
        (
            {"query": ["a"], "prompt_messages": [[{"role": {"x": 1}, "content": "c"}]], "responses": ["b"]},
            400,
            "prompt_messages[0]: message 1: role must be one of",
        ),
    ],
)
def test_bad_input_is_a_4xx_with_one_line(open_server, body, status, detail):
    content = body if isinstance(body, str) else json.dumps(body)
    answer = httpx.post(open_server + ROUTE, content=content, headers={"Content-Type": "application/json"})
    assert answer.status_code == status, answer.text
    assert detail in answer.json()["detail"] and "\n" not in answer.json()["detail"]


def test_unknown_fields_are_ignored_as_openrlhf_sends_its_own(open_server):
    answer = httpx.post(open_server + ROUTE, json={"query": ["owls"], "labels": [None], "datasource": "x"})
    assert answer.status_code == 200 and len(answer.json()["rewards"]) == 1
    body = json.dumps({"query": ["owls"], "\ud800": 1})  # an escaped lone surrogate as a key: refused, no 500
    answer = httpx.post(open_server + ROUTE, content=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == 422 and "\n" not in answer.json()["detail"]


TEXT = st.text(alphabet=st.characters(codec=None, categories=None), max_size=40) | st.sampled_from(
    ["", " ", "\ud800", "owls hunt", "<|endoftext|>", "\x00"]
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)
MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "x"]) | JSON, "content": JSON})
BODY = (
    st.fixed_dictionaries(
        {},
        optional={
            "query": st.lists(TEXT, max_size=10) | JSON,
            "prompts": st.lists(TEXT, max_size=3) | JSON,
            "prompt_messages": st.lists(st.lists(MESSAGE, max_size=3) | JSON, max_size=3) | JSON,
            "responses": st.lists(TEXT, max_size=3) | JSON,
            "labels": JSON,
        },
    )
    | JSON
)


def test_fuzz_the_reward_server_finds_no_5xx(open_server):
    """Hypothesis drives POST /get_reward on the real server: bodies of the schema's shape with
    wrong types, empty and odd strings, lone surrogates and unknown fields; and any JSON at all."""
    seen = {"examples": 0, "statuses": set()}
    client = httpx.Client(base_url=open_server, timeout=30)

    @settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(body=BODY)
    def run(body):
        content = json.dumps(body, ensure_ascii=True)  # a lone surrogate travels as its \\u escape
        answer = client.post(ROUTE, content=content, headers={"Content-Type": "application/json"})
        seen["examples"] += 1
        seen["statuses"].add(answer.status_code)
        assert answer.status_code < 500, (content[:300], answer.text[:300])
        if answer.status_code >= 400:
            assert "\n" not in answer.json()["detail"]

    start = time.monotonic()
    run()
    # A well-formed request among them, whatever hypothesis drew: the server still answers it.
    valid = client.post(ROUTE, json={"query": ["Human: hi Assistant: hello"]})
    seen["statuses"].add(valid.status_code)
    client.close()
    print(f"fuzz: {seen['examples']} examples, statuses {sorted(seen['statuses'])}, {time.monotonic() - start:.1f} s")
    assert seen["examples"] >= 300 and 200 in seen["statuses"] and 422 in seen["statuses"]


# --- 3. authentication, where it listens, docs ---------------------------------------------------


def test_tokens_are_stored_hashed_and_every_route_but_health_needs_one(tiny_reward, tmp_path):
    model, tokenizer = tiny_reward
    path = tmp_path / "reward-tokens.json"
    token = add_token(path, "trainer")
    assert token not in path.read_text() and hashlib.sha256(token.encode()).hexdigest() in path.read_text()
    assert path.stat().st_mode & 0o777 == 0o600
    with serving(create_app(model, tokenizer, token_hashes=load_token_hashes(path))) as port:
        url = f"http://127.0.0.1:{port}"
        assert httpx.post(url + ROUTE, json={"query": ["hi"]}).json() == {"detail": "token refused"}
        wrong = httpx.post(url + ROUTE, json={"query": ["hi"]}, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert httpx.post(url + "/nowhere", content=b"{}").status_code == 401  # unknown routes too
        right = httpx.post(url + ROUTE, json={"query": ["hi"]}, headers={"Authorization": f"Bearer {token}"})
        assert right.status_code == 200
        assert httpx.get(url + "/health").json() == {"status": "ok"}


def test_api_docs_are_off_unless_asked_for(tiny_reward):
    model, tokenizer = tiny_reward
    with serving(create_app(model, tokenizer)) as port:
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert httpx.get(f"http://127.0.0.1:{port}{path}").status_code == 404
    with serving(create_app(model, tokenizer, docs=True)) as port:
        assert httpx.get(f"http://127.0.0.1:{port}/openapi.json").json()["paths"][ROUTE]


def test_a_reachable_host_without_tokens_is_refused_unless_insecure(tmp_path, capsys, monkeypatch):
    import rlhf.cli
    import rlhf.rewards.server as server

    served = []
    monkeypatch.setattr(server, "serve_reward_model", lambda *args: served.append(args))
    monkeypatch.setattr(rlhf.cli, "refuse_a_taken_address", lambda *args: None)  # 10.1.2.3 is not this machine's
    assert main(["serve", "reward", "--model", str(tmp_path), "--host", "0.0.0.0"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "rlhf: error: --host 0.0.0.0: other machines could call the reward server with no token; pass --tokens "
        "FILE (rlhf serve reward-token NAME --tokens FILE), or --insecure to serve it open anyway"
    ]
    assert main(["serve", "reward", "--model", str(tmp_path), "--host", "0.0.0.0", "--insecure"]) == 0
    assert "open to anyone who can reach it (--insecure)" in capsys.readouterr().err
    tokens = tmp_path / "tokens.json"
    assert main(["serve", "reward-token", "trainer", "--tokens", str(tokens)]) == 0
    token = capsys.readouterr().out.strip()
    assert len(token) >= 40 and list(load_token_hashes(tokens).values()) == ["trainer"]
    assert main(["serve", "reward", "--model", str(tmp_path), "--host", "10.1.2.3", "--tokens", str(tokens)]) == 0
    assert "tokens travel in plain HTTP" in capsys.readouterr().err
    assert main(["serve", "reward", "--model", str(tmp_path), "--max-queries", "4"]) == 0
    assert capsys.readouterr().err == ""  # loopback: no warning
    assert served[-1][5] == Limits(max_queries=4) and served[-2][6] == load_token_hashes(tokens)


# --- 6. the small doors --------------------------------------------------------------------------


def test_bad_yaml_is_one_line_naming_file_line_and_column_from_loader_flow_and_stage(tmp_path):
    from rlhf.config import ConfigError, load_params
    from rlhf.flows.stages import pipeline_stages

    (tmp_path / "params.yaml").write_text("seed: 0\ntrain_policy:\n  kl_coef: [1, 2\n  ppo_epochs: 4\n")
    expected = f"{tmp_path / 'params.yaml'}: line 4 not valid YAML (column 13: expected ',' or ']', but got ':')"
    with pytest.raises(ConfigError) as loader:
        load_params(tmp_path / "params.yaml")
    with pytest.raises(ConfigError) as flow:  # before DVC reads the file (its trace ran 272 lines)
        pipeline_stages(tmp_path)
    assert str(loader.value) == str(flow.value) == expected
    stage = subprocess.run(
        [
            sys.executable,
            "-m",
            "rlhf.stages.collect_prompts",
            "--params",
            str(tmp_path / "params.yaml"),
            "--prompts",
            str(tmp_path / "prompts.parquet"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert stage.returncode == 2 and expected in stage.stderr and len(stage.stderr.strip().splitlines()) == 1


def test_dvc_repro_on_bad_yaml_names_file_line_and_column_without_a_traceback(tmp_path, project_root):
    """`dvc repro` reads params.yaml itself, before any code of ours runs: its own error is what people
    see. Pinned here: no traceback, the file, the line and the column named (DVC's message is 7 lines:
    the problem, and ruamel's marks with the offending text)."""
    for name in ("dvc.yaml", "params.yaml", "rounds.yaml"):
        shutil.copy(project_root / name, tmp_path / name)
    good_lines = len((tmp_path / "params.yaml").read_text().splitlines())
    with (tmp_path / "params.yaml").open("a") as params:
        params.write("seed: [1, 2\nfoo: bar\n")
    dvc = str(Path(sys.executable).parent / "dvc")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([dvc, "init", "-q"], cwd=tmp_path, check=True)
    repro = subprocess.run([dvc, "repro"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    output = repro.stdout + repro.stderr
    assert repro.returncode != 0 and "Traceback" not in output
    assert output.startswith("ERROR: unable to read: 'params.yaml', YAML file structure is corrupted"), output
    assert f"line {good_lines + 1}, column 7" in output and len(output.strip().splitlines()) <= 8, output


def test_store_query_runs_with_external_access_off(tmp_path, capsys):
    from rlhf.store import FeedbackStore

    path = tmp_path / "feedback.duckdb"
    FeedbackStore(path).counts()  # a store at the current schema
    assert main(["store", "--path", str(path), "query", "SELECT count(*) AS n FROM prompts"]) == 0
    assert capsys.readouterr().out.split() == ["n", "0"]
    target = tmp_path / "out.csv"
    for sql in [
        f"COPY (SELECT 1) TO '{target}'",
        f"ATTACH '{tmp_path / 'x.duckdb'}'",
        "INSTALL httpfs",
        "LOAD httpfs",
        f"EXPORT DATABASE '{tmp_path / 'exp'}'",
        "SELECT * FROM read_csv('/etc/hostname')",
        "SET enable_external_access = true",
    ]:
        assert main(["store", "--path", str(path), "query", sql]) == 2, sql
        err = capsys.readouterr().err
        assert err.startswith("rlhf: error: ") and len(err.strip().splitlines()) == 1, err
    assert not target.exists() and not (tmp_path / "x.duckdb").exists() and not (tmp_path / "exp").exists()

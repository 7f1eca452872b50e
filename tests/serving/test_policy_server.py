"""The policy server end to end over a real uvicorn, a tiny policy and a real DuckDB store: exchanges
recorded with their provenance, each kind of feedback, refusals, the proxy in front of another
OpenAI-compatible server, and the snapshot taking the deployed pairs."""

import json
import threading
from http.server import ThreadingHTTPServer
from typing import ClassVar

import httpx
import pandas as pd
import pytest

from rlhf import chat
from rlhf.pretrained import checkpoint_hash
from tests.serving.conftest import LIMITS, ask, bearer, serving
from tests.support.judge_api import SECRET, ScriptedAPI
from tests.support.servers import raw_request, status_and_detail

pytestmark = pytest.mark.timeout(180)


def feedback(client, address, token, **body):
    return client.post(f"{address}/v1/feedback", json=body, headers=bearer(token))


def test_an_exchange_is_answered_in_openai_shape_and_stored_with_its_provenance(
    server, store, tokens, tiny_checkpoints, local_policy
):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "tell me about cats . answer :"}]
    with httpx.Client(timeout=30) as client:
        answer = client.post(
            f"{server}/v1/chat/completions",
            json={"model": "x", "messages": messages, "max_tokens": 6, "temperature": 0.7, "top_p": 0.9, "seed": 1},
            headers=bearer(tokens["alice"]),
        )
        models = client.get(f"{server}/v1/models", headers=bearer(tokens["bob"])).json()
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert [c["index"] for c in body["choices"]] == [0]
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["choices"][0]["finish_reason"] in ("stop", "length")
    assert 1 <= body["usage"]["completion_tokens"] <= 6
    assert models["data"][0]["id"] == tiny_checkpoints[0].name
    row = store.query("SELECT * FROM exchanges").to_dict(orient="records")
    assert len(row) == 1
    row = row[0]
    assert row["exchange_id"] == body["id"] and row["client"] == "alice"
    assert json.loads(row["answers"]) == [body["choices"][0]["message"]["content"]]
    assert chat.from_json(row["messages"]) == messages
    assert row["policy_checkpoint"] == checkpoint_hash(tiny_checkpoints[0])
    # the prompt the policy continued is its chat template's rendering, as sample_responses renders it
    assert row["rendered_prompt"] == chat.render_prompt(local_policy.tokenizer, messages)
    sampling = json.loads(row["sampling"])
    assert (sampling["temperature"], sampling["top_p"], sampling["max_tokens"], sampling["n"]) == (0.7, 0.9, 6, 1)


def test_each_kind_of_feedback_is_stored_once_and_edits_and_choices_become_deployed_pairs(server, store, tokens):
    alice = tokens["alice"]
    with httpx.Client(timeout=30) as client:
        one = ask(client, server, alice).json()
        two = ask(client, server, alice, "tell me about cats . answer :", n=2).json()
        assert len(two["choices"]) == 2
        replies = [
            feedback(client, server, alice, exchange_id=one["id"], thumbs="down", reason="off topic"),
            feedback(client, server, alice, exchange_id=one["id"], rating=2),
            feedback(client, server, alice, exchange_id=one["id"], edited="owls hunt at night , glad to help"),
            feedback(client, server, alice, exchange_id=two["id"], choice=1),
            feedback(client, server, alice, exchange_id=two["id"], thumbs="up", answer=1),
        ]
        again = feedback(client, server, alice, exchange_id=one["id"], thumbs="down", reason="off topic")
        changed = feedback(client, server, alice, exchange_id=one["id"], thumbs="up")
        other_choice = feedback(client, server, alice, exchange_id=two["id"], choice=0)
    assert [r.status_code for r in replies] == [200] * 5, [r.text for r in replies]
    assert [r.json()["pairs"] for r in replies] == [0, 0, 1, 1, 0]
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert changed.status_code == 409 and other_choice.status_code == 409
    assert "that stands" in changed.json()["detail"]
    stored = store.query("SELECT kind, answer, client, thumbs_up, rating, reason FROM exchange_feedback ORDER BY kind")
    stored = stored.astype(object).where(stored.notna(), None)
    assert stored.values.tolist() == [
        ["choice", 1, "alice", None, None, None],
        ["edit", 0, "alice", None, None, None],
        ["rating", 0, "alice", None, 2, None],
        ["thumbs", 0, "alice", False, None, "off topic"],
        ["thumbs", 1, "alice", True, None, None],
    ]
    # each thumb is also a binary label of source deployed (KTO's data), on the answer it is about
    labels = store.binary_labels("deployed")
    thumbed = [(one, 0, False), (two, 1, True)]
    expected = {
        (e["choices"][i]["message"]["content"], up) for e, i, up in thumbed if e["choices"][i]["message"]["content"]
    }
    assert set(zip(labels["response"], labels["desirable"])) == expected
    assert set(labels["annotator"]) <= {"alice"} and len(labels) == len(expected)
    pairs = store.comparisons().set_index("judge_version")
    assert list(pairs["judge"]) == ["deployed", "deployed"] and set(pairs.index) == {"alice"}
    chosen = set(pairs["chosen"])
    assert "owls hunt at night , glad to help" in chosen  # the edit is preferred to the answer
    assert two["choices"][1]["message"]["content"] in chosen  # the choice: answer 1 over answer 0
    assert set(pairs["rejected"]) == {one["choices"][0]["message"]["content"], two["choices"][0]["message"]["content"]}


def test_refusals_are_one_line_with_the_right_status(server, store, tokens):
    alice, bob = tokens["alice"], tokens["bob"]
    with httpx.Client(timeout=30) as client:
        mine = ask(client, server, alice).json()["id"]
        cases = {
            "no token": client.post(f"{server}/v1/chat/completions", json={"messages": []}),
            "bad token": ask(client, server, "not-a-token-of-anyone"),
            "unknown id": feedback(client, server, alice, exchange_id="chatcmpl-nope", thumbs="up"),
            "another's id": feedback(client, server, bob, exchange_id=mine, thumbs="up"),
            "no messages": client.post(f"{server}/v1/chat/completions", json={"messages": []}, headers=bearer(alice)),
            "bad role": ask(client, server, alice, messages=[{"role": "tool", "content": "x"}]),
            "two kinds": feedback(client, server, alice, exchange_id=mine, thumbs="up", rating=3),
            "rating 6": feedback(client, server, alice, exchange_id=mine, rating=6),
            "choice of one": feedback(client, server, alice, exchange_id=mine, choice=0),
            "stream": ask(client, server, alice, stream=True),
            "max_tokens": ask(client, server, alice, max_tokens=LIMITS.max_tokens + 1),
            "long message": ask(client, server, alice, "x" * (LIMITS.max_chars + 1)),
            "over the context": ask(client, server, alice, "owls " * 300),  # 128 positions in the tiny policy
            "not json": client.post(
                f"{server}/v1/feedback", content=b"{nope", headers={**bearer(alice), "content-type": "application/json"}
            ),
        }
    statuses = {name: answer.status_code for name, answer in cases.items()}
    assert statuses == {
        "no token": 401,
        "bad token": 401,
        "unknown id": 404,
        "another's id": 404,
        "no messages": 422,
        "bad role": 422,
        "two kinds": 422,
        "rating 6": 422,
        "choice of one": 422,
        "stream": 422,
        "max_tokens": 413,
        "long message": 413,
        "over the context": 413,
        "not json": 422,
    }
    for name, answer in cases.items():
        detail = answer.json()["detail"]
        assert isinstance(detail, str) and "\n" not in detail and detail, (name, detail)
    assert cases["max_tokens"].json()["detail"].endswith("(--max-tokens)")
    assert cases["over the context"].json()["detail"].endswith("over the model's context of 128 tokens")
    # an oversized body is refused from its header, before the token is even looked at
    port = int(server.rsplit(":", 1)[1])
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {LIMITS.max_body_bytes + 1}\r\n\r\n"
    ).encode()
    status, detail = status_and_detail(raw_request(port, head, [b"x" * 1024] * 80)[0])
    assert status == 413 and "(--max-body-bytes)" in detail
    # only the one exchange asked for was recorded; no refusal wrote anything
    assert store.query("SELECT count(*) AS n FROM exchanges")["n"][0] == 1
    assert store.query("SELECT count(*) AS n FROM exchange_feedback")["n"][0] == 0


def test_a_proxy_in_front_of_another_openai_compatible_server_records_the_upstream(
    local_policy, store, tokens, tmp_path
):
    """The upstream is itself a policy server (no recording): a real OpenAI-compatible endpoint."""
    from rlhf.serving.backends import Upstream
    from rlhf.store import FeedbackStore

    upstream_store = FeedbackStore(tmp_path / "upstream.duckdb")
    from rlhf.annotation.annotators import add_annotator

    proxy_token = add_annotator(upstream_store, "proxy")
    with serving(local_policy, upstream_store, record=False) as upstream_address:
        upstream = Upstream(f"{upstream_address}/v1", api_key=proxy_token)
        with serving(upstream, store) as proxy, httpx.Client(timeout=30) as client:
            answer = ask(client, proxy, tokens["bob"], n=2)
            down = Upstream(f"{upstream_address}/v1", api_key="wrong-token")
            with serving(down, store) as refused_proxy:
                bad_gateway = ask(client, refused_proxy, tokens["bob"])
            no_record = client.post(
                f"{upstream_address}/v1/feedback",
                json={"exchange_id": answer.json()["id"], "thumbs": "up"},
                headers=bearer(proxy_token),
            )
    assert answer.status_code == 200, answer.text
    row = store.query("SELECT client, model, policy_checkpoint, answers, rendered_prompt FROM exchanges")
    assert row["client"].tolist() == ["bob"]
    assert row["policy_checkpoint"][0] == f"upstream:{upstream_address}/v1#{local_policy.name}"
    assert json.loads(row["answers"][0]) == [c["message"]["content"] for c in answer.json()["choices"]]
    assert row["rendered_prompt"][0] is None
    assert bad_gateway.status_code == 502 and "answered 401" in bad_gateway.json()["detail"]
    assert upstream_store.query("SELECT count(*) AS n FROM exchanges")["n"][0] == 0  # the upstream recorded nothing
    assert no_record.status_code == 404 and "--no-record" in no_record.json()["detail"]


def test_a_store_busy_past_the_wait_answers_503_and_the_server_goes_on_once_it_is_free(local_policy, store, tokens):
    with serving(local_policy, store, store_timeout_s=0.5) as address, httpx.Client(timeout=30) as client:
        first = ask(client, address, tokens["alice"])  # signed in: the answer is kept a while
        assert first.status_code == 200
        with store.lock:  # a pipeline stage holds the store
            busy = ask(client, address, tokens["alice"])
        after = ask(client, address, tokens["alice"])
    assert busy.status_code == 503 and busy.headers["retry-after"] == "2"
    assert busy.json()["detail"].startswith("the store is busy")
    assert after.status_code == 200
    stored = set(store.query("SELECT exchange_id FROM exchanges")["exchange_id"])
    assert {first.json()["id"], after.json()["id"]} <= stored  # every answered exchange is stored


def test_the_next_rounds_snapshot_takes_the_deployed_pairs_when_its_scope_lists_the_import(
    server, store, tokens, tmp_path
):
    """store_comparisons' own work (store_round) with store.snapshot.imports: [deployed] takes the
    served pairs beside the round's rankings; without it, only the round's."""
    from rlhf.config import Params
    from rlhf.snapshot import read_comparisons
    from rlhf.store.round import store_round
    from tests.store.test_snapshot_scope import frames

    with httpx.Client(timeout=30) as client:
        shown = ask(client, server, tokens["alice"], n=2).json()
        assert feedback(client, server, tokens["alice"], exchange_id=shown["id"], choice=0).status_code == 200
    queue = pd.DataFrame(columns=["item_id", "prompt_id", "response_ids", "reason"])
    taken = {}
    for name, imports in (("without", []), ("with", ["deployed"])):
        params = Params.model_validate({"store": {"path": str(store.path), "snapshot": {"imports": imports}}})
        round_rows = frames("round-1", "sft", 2)  # this round's own rankings: one pair per prompt, two prompts
        run = {"run_id": "round-1", "stage": "store_comparisons"}
        store_round(store, params, run, *round_rows, queue, tmp_path / name)
        taken[name] = read_comparisons(tmp_path / name)
    assert set(taken["without"]["judge"]) == {"rules"} and len(taken["without"]) == 2
    deployed = taken["with"][taken["with"]["judge"] == "deployed"]
    assert len(taken["with"]) == 3 and len(deployed) == 1
    assert deployed["chosen"].tolist() == [shown["choices"][0]["message"]["content"]]
    assert deployed["rejected"].tolist() == [shown["choices"][1]["message"]["content"]]
    assert deployed["judge_version"].tolist() == ["alice"]
    sources = json.loads((tmp_path / "with" / "scope.json").read_text())["taken"]
    assert {"rankings": 1, "run_id": "import-deployed", "source": "import deployed"} in sources


def test_the_command_refuses_a_missing_checkpoint_or_a_bad_upstream_in_one_line(tmp_path, capsys):
    from rlhf.cli import main

    store = str(tmp_path / "feedback.duckdb")
    assert main(["serve", "policy", "--checkpoint", str(tmp_path / "nope"), "--store", store]) == 2
    assert (
        capsys.readouterr().err
        == f"rlhf: error: --checkpoint {tmp_path / 'nope'}: no policy checkpoint directory here\n"
    )
    assert main(["serve", "policy", "--upstream", "127.0.0.1:8000", "--store", store]) == 2
    assert "expected an http:// or https:// URL" in capsys.readouterr().err
    assert main(["serve", "policy", "--upstream", "http://x/v1", "--upstream-key-env", "RLHF_NO_SUCH_VARIABLE"]) == 2
    assert "RLHF_NO_SUCH_VARIABLE: no such environment variable is set" in capsys.readouterr().err
    assert not (tmp_path / "feedback.duckdb").exists()  # nothing was created


def test_a_revoked_client_is_refused_once_its_sign_in_expires(local_policy, store, tokens):
    from rlhf.annotation.annotators import revoke_annotator

    with serving(local_policy, store, sign_in_ttl_s=0.0) as address, httpx.Client(timeout=30) as client:
        before = ask(client, address, tokens["bob"])
        revoke_annotator(store, "bob")
        after = ask(client, address, tokens["bob"])
        alice = ask(client, address, tokens["alice"])
    assert (before.status_code, after.status_code, alice.status_code) == (200, 401, 200)
    assert after.json()["detail"] == "token revoked"


class OneChoiceAPI(ScriptedAPI):
    """An upstream that takes no `n` (as TGI's chat endpoint): one choice per answer, whatever was asked."""

    script: ClassVar[list[str]] = []
    seen: ClassVar[list[dict]] = []

    def answer(self, body: dict, action: str) -> None:
        choice = {"index": 0, "message": {"role": "assistant", "content": f"answer {len(self.seen)}"}}
        self._send(200, {"model": "one-choice", "choices": [choice], "usage": {"completion_tokens": 2}})


def test_a_proxy_asks_again_for_the_second_answer_and_never_shows_the_upstream_key(store, tokens):
    from rlhf.serving.backends import Upstream

    upstream = ThreadingHTTPServer(("127.0.0.1", 0), OneChoiceAPI)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    address = f"http://127.0.0.1:{upstream.server_address[1]}/v1"
    try:
        with serving(Upstream(address, "one-choice", api_key=SECRET), store) as proxy, httpx.Client(timeout=30) as c:
            two = ask(c, proxy, tokens["alice"], n=2)
            OneChoiceAPI.script.append("503")  # an upstream error that echoes our key
            failed = ask(c, proxy, tokens["alice"])
    finally:
        upstream.shutdown()
    assert two.status_code == 200, two.text
    assert [choice["message"]["content"] for choice in two.json()["choices"]] == ["answer 1", "answer 2"]
    assert [seen["body"]["n"] for seen in OneChoiceAPI.seen[:2]] == [2, 1]  # asked again for the one missing
    assert all(seen["auth"] == f"Bearer {SECRET}" for seen in OneChoiceAPI.seen)  # the upstream's key, not ours
    assert two.json()["usage"]["completion_tokens"] == 4
    assert failed.status_code == 502 and "answered 503" in failed.json()["detail"]
    assert SECRET not in failed.text and "<upstream key>" in failed.json()["detail"]

"""The human ranking page, served for real on 127.0.0.1 and driven in headless Chromium."""

import json
import shutil
import threading
import time

import httpx
import pandas as pd
import pytest

from rlhf import chat
from rlhf.annotation.app import create_app, load_tokens, ranks_from_order
from rlhf.errors import InputError
from rlhf.ranking import RANKING_COLUMNS
from rlhf.store import FeedbackStore
from rlhf.text import content_id
from tests.support.annotation_page import (
    OTHER_TOKEN,
    PAYLOAD,
    PROMPTS,
    RESPONSES,
    TOKEN,
    count,
    free_port,
    response_rows,
    serving,
    wait_for,
)

# A conversation: the prompt runs over three turns, one response over three (an HH-RLHF import).
SCRIPT = "<script>window.pwned=1</script>"
CHAT_PROMPT = [
    {"role": "user", "content": "how do owls hunt ?"},
    {"role": "assistant", "content": f"at night . {SCRIPT}"},
    {"role": "user", "content": "and cats ?"},
]
CHAT_RESPONSES = [
    [{"role": "assistant", "content": "cats stalk by day"}],
    [
        {"role": "assistant", "content": "cats pounce"},
        {"role": "user", "content": SCRIPT},
        {"role": "assistant", "content": "they do , glad to help"},
    ],
]


@pytest.fixture
def chat_store(tmp_path):
    """A store with one queued item whose prompt and second response span several turns."""
    store = FeedbackStore(tmp_path / "chat.duckdb")
    prompts = pd.DataFrame(
        [("p-chat", chat.transcript(CHAT_PROMPT), chat.to_json(CHAT_PROMPT), None, "train", "test")],
        columns=["prompt_id", "prompt", "messages", "topic", "split", "source"],
    )
    responses = pd.DataFrame(
        [
            (f"p-chat-r{i}", "p-chat", i, turns[0]["content"], chat.to_json(turns), "ckpt", "{}")
            for i, turns in enumerate(CHAT_RESPONSES)
        ],
        columns=["response_id", "prompt_id", "sample_index", "response", "messages", "policy_checkpoint", "sampling"],
    )
    run = {"run_id": "chat-run", "stage": "test"}
    store.ingest(run, prompts, responses, pd.DataFrame(columns=RANKING_COLUMNS))
    ids = ["p-chat-r0", "p-chat-r1"]
    items = pd.DataFrame(
        [(content_id("p-chat", *ids), "p-chat", json.dumps(ids), "human")],
        columns=["item_id", "prompt_id", "response_ids", "reason"],
    )
    assert store.enqueue(run, items) == 1
    return store


@pytest.fixture
def server(store):
    with serving(store) as address:
        yield address


@pytest.fixture
def chat_server(chat_store):
    with serving(chat_store) as address:
        yield address


pytestmark = pytest.mark.browser


def test_rank_with_the_keyboard_submit_and_find_the_ranking_and_pairs_in_the_store(server, browser, store):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(f"{server}/#token={TOKEN}")
    wait_for(lambda: len(response_rows(browser)) == 3)
    assert browser.find_element(By.ID, "progress").text == "0 of 2 done"
    item_prompt = browser.find_element(By.ID, "prompt").text
    prompt_id = next(pid for pid, text in PROMPTS.items() if text == item_prompt)
    shown = [row.get_attribute("data-id") for row in response_rows(browser)]
    assert shown == [f"{prompt_id}-r{i}" for i in range(3)]

    # Move the last response to the top (Shift+Up twice), then tie the second with the first.
    last = response_rows(browser)[2]
    last.click()
    last.send_keys(Keys.SHIFT, Keys.ARROW_UP)
    last.send_keys(Keys.SHIFT, Keys.ARROW_UP)
    order = [row.get_attribute("data-id") for row in response_rows(browser)]
    assert order == [shown[2], shown[0], shown[1]]
    second = response_rows(browser)[1]
    second.send_keys(Keys.ARROW_UP)  # focus moves up without moving anything
    second.send_keys("t")
    assert [row.find_element(By.CLASS_NAME, "rank").text for row in response_rows(browser)] == ["1", "1", "3"]
    response_rows(browser)[2].send_keys("u")  # flag the worst as unsafe
    response_rows(browser)[0].send_keys(Keys.ENTER)

    wait_for(lambda: browser.find_element(By.ID, "progress").text == "1 of 2 done")
    ranking = store.query(
        "SELECT response_id, rank, judge, judge_version, reasons FROM rankings WHERE judge = 'human' ORDER BY rank"
    )
    assert dict(zip(ranking["response_id"], ranking["rank"])) == {shown[2]: 1, shown[0]: 1, shown[1]: 3}
    assert set(ranking["judge_version"]) == {"alice"}
    assert json.loads(ranking.set_index("response_id").loc[shown[1], "reasons"]) == {"unsafe": True}
    pairs = store.query("SELECT chosen_id, rejected_id, tie FROM comparisons ORDER BY tie, chosen_id")
    assert len(pairs) == 3 and pairs["tie"].sum() == 1
    assert set(pairs.loc[~pairs["tie"], "rejected_id"]) == {shown[1]}
    events = store.query("SELECT action, response_id FROM annotation_events ORDER BY action")
    assert list(events["action"]) == ["flagged_unsafe", "ranked"] and events["response_id"][0] == shown[1]


def test_a_script_in_a_response_stays_inert_text(server, browser, store):
    from selenium.webdriver.common.by import By

    browser.get(f"{server}/#token={TOKEN}")
    wait_for(lambda: len(response_rows(browser)) == 3)
    if browser.find_element(By.ID, "prompt").text != PROMPTS["p-owls"]:
        browser.find_element(By.ID, "skip").click()  # the owls prompt carries the payload
        wait_for(lambda: browser.find_element(By.ID, "prompt").text == PROMPTS["p-owls"])
    texts = [row.find_element(By.CLASS_NAME, "text").text for row in response_rows(browser)]
    assert PAYLOAD in texts
    assert browser.execute_script("return window.pwned === undefined")
    assert count(browser, "#responses script, #responses img") == 0


def turns_shown(browser, selector):
    """(role label, text) of each turn under `selector`, as the page renders them ("" where no label).
    Read with one script: a find_elements that finds nothing waits out the implicit wait."""
    return [
        tuple(turn)
        for turn in browser.execute_script(
            "return Array.from(document.querySelectorAll(arguments[0] + ' .turn'), (turn) => "
            "[turn.querySelector('.role')?.innerText ?? '', turn.querySelector('.content').innerText])",
            selector,
        )
    ]


def test_a_multi_turn_prompt_shows_its_turns_with_their_roles_in_order(chat_server, browser):
    from selenium.webdriver.common.by import By

    browser.get(f"{chat_server}/#token={TOKEN}")
    wait_for(lambda: len(response_rows(browser)) == 2)
    assert turns_shown(browser, "#prompt") == [
        ("User", "how do owls hunt ?"),
        ("Assistant", f"at night . {SCRIPT}"),
        ("User", "and cats ?"),
    ]
    roles = [turn.get_attribute("data-role") for turn in browser.find_elements(By.CSS_SELECTOR, "#prompt .turn")]
    assert roles == ["user", "assistant", "user"]
    assert turns_shown(browser, "#responses li:nth-child(1)") == [("", "cats stalk by day")]  # as before: its text
    assert response_rows(browser)[0].find_element(By.CLASS_NAME, "text").text == "cats stalk by day"
    assert turns_shown(browser, "#responses li:nth-child(2)") == [
        ("Assistant", "cats pounce"),
        ("User", SCRIPT),
        ("Assistant", "they do , glad to help"),
    ]


def test_a_script_in_a_message_renders_as_text(chat_server, browser, chat_store):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(f"{chat_server}/#token={TOKEN}")
    wait_for(lambda: len(response_rows(browser)) == 2)
    assert browser.execute_script("return window.pwned === undefined")
    assert count(browser, "#prompt script, #responses script, .content *") == 0
    contents = browser.execute_script(
        "return Array.from(document.querySelectorAll('.content'), (node) => node.textContent)"
    )
    assert contents.count(f"at night . {SCRIPT}") == 1 and contents.count(SCRIPT) == 1
    # The keyboard flow works over multi-turn rows: move the three-turn response up, tie, submit.
    second = response_rows(browser)[1]
    second.click()
    second.send_keys(Keys.SHIFT, Keys.ARROW_UP)
    assert [row.get_attribute("data-id") for row in response_rows(browser)] == ["p-chat-r1", "p-chat-r0"]
    response_rows(browser)[1].send_keys("t")
    response_rows(browser)[1].send_keys(Keys.ENTER)
    wait_for(lambda: browser.find_element(By.ID, "done").is_displayed())
    ranks = chat_store.query("SELECT response_id, rank FROM rankings WHERE judge = 'human'")
    assert dict(zip(ranks["response_id"], ranks["rank"])) == {"p-chat-r1": 1, "p-chat-r0": 1}
    assert browser.execute_script("return window.pwned === undefined")


def test_next_item_returns_the_messages_of_the_prompt_and_each_response(chat_store, store):
    item = chat_store.next_item("alice")
    assert item["prompt"] == chat.transcript(CHAT_PROMPT)
    assert item["messages"] == CHAT_PROMPT
    assert [r["messages"] for r in item["responses"]] == CHAT_RESPONSES
    assert [r["text"] for r in item["responses"]] == ["cats stalk by day", "cats pounce"]
    # Rows written as plain strings have one user turn and one assistant turn each.
    plain = store.next_item("alice")
    assert plain["messages"] == [{"role": "user", "content": PROMPTS[plain["prompt_id"]]}]
    texts = RESPONSES[plain["prompt_id"]]
    assert [r["messages"] for r in plain["responses"]] == [[{"role": "assistant", "content": t}] for t in texts]
    # A row without messages (NULL) falls back to the same, from its text.
    with store.transaction() as con:
        con.execute("UPDATE prompts SET messages = NULL")
        con.execute("UPDATE responses SET messages = NULL")
    assert store.next_item("alice") == plain


def test_a_wrong_token_is_refused(server, browser):
    from selenium.webdriver.common.by import By

    assert httpx.get(f"{server}/api/next", headers={"Authorization": "Bearer wrong-token-123456"}).status_code == 401
    assert httpx.get(f"{server}/api/next").status_code == 401
    bad = httpx.post(f"{server}/api/submit", json={"item_id": "x", "order": ["a", "b"], "tied_with_above": [0, 0]})
    assert bad.status_code == 401
    browser.get(f"{server}/#token=wrong-token-123456")
    wait_for(lambda: browser.find_element(By.ID, "status").text == "Token refused.")
    assert browser.find_element(By.ID, "login").is_displayed()
    assert not browser.find_element(By.ID, "task").is_displayed()


def test_two_annotators_have_their_own_progress(server, store):
    for token in (TOKEN, OTHER_TOKEN):
        item = httpx.get(f"{server}/api/next", headers={"Authorization": f"Bearer {token}"}).json()["item"]
        order = [r["response_id"] for r in item["responses"]]
        done = httpx.post(
            f"{server}/api/submit",
            headers={"Authorization": f"Bearer {token}"},
            json={"item_id": item["item_id"], "order": order, "tied_with_above": [False] * 3},
        )
        assert done.status_code == 200 and done.json()["pairs"] == 3
        # Overlap unset (as before): each person ranks every item; the item stops waiting at the first.
        assert done.json()["progress"] == {"done": 1, "total": 2, "queue_items": 2, "queue_waiting": 1}
    assert sorted(store.query("SELECT DISTINCT judge_version FROM rankings")["judge_version"]) == ["alice", "bob"]


def test_ranks_from_order_gives_competition_ranks_with_ties():
    assert ranks_from_order(["a", "b", "c", "d"], [False, True, False, True]) == {"a": 1, "b": 1, "c": 3, "d": 3}


def test_tokens_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "tokens.json"
    bad.write_text('{"short": "alice"}')
    with pytest.raises(InputError, match="tokens.json: expected a JSON object of token"):
        load_tokens(bad)
    bad.write_text("{not json")
    with pytest.raises(InputError, match=r"tokens.json: line 1: not valid JSON"):
        load_tokens(bad)


# --- the human-ranking deployment's flow: it serves this page until the queue is done ---


@pytest.fixture
def ranking_workspace(store, tmp_path, project_root):
    """A workspace whose params.yaml points at the store above, with a tokens file for alice."""
    shutil.copy(project_root / "params.yaml", tmp_path / "params.yaml")  # store.path: feedback.duckdb, as here
    (tmp_path / "annotators.json").write_text(json.dumps({TOKEN: "alice"}))
    return tmp_path


def run_in_thread(function, **kwargs) -> tuple[threading.Thread, dict]:
    outcome = {}

    def target():
        try:
            outcome["result"] = function(**kwargs)
        except Exception as error:
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


def test_human_ranking_flow_serves_the_page_until_people_rank_the_queue(prefect_harness, ranking_workspace):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from rlhf.flows.human_ranking import PROGRESS_KEY, human_ranking

    port = free_port()
    thread, outcome = run_in_thread(human_ranking, root=str(ranking_workspace), port=port, timeout_s=120, poll_s=0.2)
    page, headers = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {TOKEN}"}
    deadline, ranked = time.monotonic() + 60, 0
    while time.monotonic() < deadline and ranked < 2:
        try:
            item = httpx.get(f"{page}/api/next", headers=headers).json()["item"]
        except httpx.TransportError:  # the flow has not started serving yet
            time.sleep(0.2)
            continue
        order = [r["response_id"] for r in item["responses"]]
        httpx.post(
            f"{page}/api/submit",
            headers=headers,
            json={"item_id": item["item_id"], "order": order, "tied_with_above": [False] * len(order)},
        ).raise_for_status()
        ranked += 1
        if ranked == 1:
            time.sleep(0.5)  # a few of the flow's polls
            assert thread.is_alive()  # one item still waits: the flow keeps serving
    thread.join(timeout=60)
    assert outcome == {"result": {"items": 2, "waiting": 0}}
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[PROGRESS_KEY])))
    assert max(float(a.data) for a in artifacts) == 100.0
    with pytest.raises(httpx.TransportError):  # the page closed with the run
        httpx.get(f"{page}/api/next", headers=headers, timeout=2)


def test_human_ranking_flow_fails_naming_what_still_waits_when_its_window_ends(prefect_harness, ranking_workspace):
    from rlhf.flows.human_ranking import QueueNotDone, human_ranking

    with pytest.raises(QueueNotDone, match=r"closed after 1s with 2 of 2 items waiting"):
        human_ranking(root=str(ranking_workspace), port=free_port(), timeout_s=1, poll_s=0.2)


def test_the_flows_page_server_leaves_logging_configuration_alone(monkeypatch):
    """uvicorn's default log_config runs logging.config.dictConfig, which deadlocked the human
    ranking flow against Prefect's API log handler (FACTS.md); the server must never call it."""
    import logging.config

    from rlhf.flows.human_ranking import ranking_server

    def refuse(*args, **kwargs):
        raise AssertionError("logging.config.dictConfig was called")

    monkeypatch.setattr(logging.config, "dictConfig", refuse)
    server = ranking_server(create_app(FeedbackStore(":memory:"), {}), "127.0.0.1", 0)
    assert server.config.log_config is None

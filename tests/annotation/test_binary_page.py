"""The ranking page's binary mode (thumbs up/down), served for real on 127.0.0.1: headless Chromium
labels a response bad with a reason and the store's binary_labels holds it with its provenance;
the API refuses what the mode does not ask for."""

import json

import httpx
import pandas as pd
import pytest

from rlhf.text import content_id
from tests.support.annotation_page import (
    PROMPTS,
    RESPONSES,
    TEST_RUN,
    TOKEN,
    serving,
    store_with_page_responses,
    wait_for,
)

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def binary_store(tmp_path):
    """The cats prompt's three responses, each queued alone (the binary mode), and the owls prompt's
    three queued together as a ranking: one page serves both."""
    store = store_with_page_responses(tmp_path / "feedback.duckdb", "test")
    run = TEST_RUN
    alone = [("p-cats", [f"p-cats-r{i}"], "binary") for i in range(3)]
    together = [("p-owls", [f"p-owls-r{i}" for i in range(3)], "human")]
    items = pd.DataFrame(
        [(content_id(pid, *ids), pid, json.dumps(ids), reason) for pid, ids, reason in alone + together],
        columns=["item_id", "prompt_id", "response_ids", "reason"],
    )
    store.enqueue(run, items)
    return store


def next_item(server: str) -> dict:
    answer = httpx.get(f"{server}/api/next", headers=AUTH)
    assert answer.status_code == 200, answer.text
    return answer.json()["item"]


def next_binary_item(server: str) -> dict:
    """The next item that asks for one response's label, skipping a ranking item if it comes first."""
    item = next_item(server)
    if len(item["responses"]) > 1:
        assert httpx.post(f"{server}/api/skip", headers=AUTH, json={"item_id": item["item_id"]}).status_code == 200
        item = next_item(server)
    assert len(item["responses"]) == 1
    return item


@pytest.mark.browser
def test_a_bad_label_with_a_reason_is_stored_with_the_annotator(binary_store, browser):
    from selenium.webdriver.common.by import By

    with serving(binary_store) as server:
        browser.get(f"{server}/#token={TOKEN}")
        wait_for(lambda: browser.find_element(By.ID, "prompt").text != "")
        if browser.find_element(By.ID, "prompt").text != PROMPTS["p-cats"]:  # the ranking item came first
            browser.find_element(By.ID, "skip").click()
            wait_for(lambda: browser.find_element(By.ID, "prompt").text == PROMPTS["p-cats"])
        wait_for(lambda: browser.find_element(By.ID, "binary-view").is_displayed())
        assert not browser.find_element(By.ID, "rank-view").is_displayed()
        assert not browser.find_element(By.ID, "submit").is_displayed()
        shown = browser.find_element(By.ID, "binary-response").text
        assert shown in RESPONSES["p-cats"]
        browser.find_element(By.ID, "binary-reason").send_keys("  does not answer the question ")
        browser.find_element(By.ID, "thumb-down").click()

        wait_for(lambda: len(binary_store.binary_labels()) == 1)
        label = binary_store.binary_labels().iloc[0]
        assert (label["desirable"], label["reason"]) == (False, "does not answer the question")
        assert (label["annotator"], label["source"], label["policy_checkpoint"]) == ("alice", "page", "ckpt")
        assert (label["prompt"], label["response"], label["split"]) == (PROMPTS["p-cats"], shown, "test")
        assert label["response_id"] == f"p-cats-r{RESPONSES['p-cats'].index(shown)}"
        assert label["item_id"] == content_id("p-cats", label["response_id"])
        event = binary_store.query("SELECT action, mode FROM annotation_events WHERE item_id = ?", [label["item_id"]])
        assert event.values.tolist() == [["ranked", "binary"]]  # the queue counts it as this person's done

        # the next response: a thumbs up by key, without a reason
        wait_for(lambda: browser.find_element(By.ID, "binary-response").text not in ("", shown))
        second = browser.find_element(By.ID, "binary-response").text
        browser.find_element(By.TAG_NAME, "body").send_keys("g")
        wait_for(lambda: len(binary_store.binary_labels()) == 2)
        labels = binary_store.binary_labels().set_index("response")
        assert labels.loc[second, "desirable"] and pd.isna(labels.loc[second, "reason"])


def test_the_label_api_takes_only_what_the_item_asks_for(binary_store):
    with serving(binary_store) as server:
        item = next_binary_item(server)
        response_id = item["responses"][0]["response_id"]
        label = {"item_id": item["item_id"], "response_id": response_id, "desirable": True}

        def post(body, path="/api/label"):
            return httpx.post(f"{server}{path}", headers=AUTH, json=body)

        assert post({**label, "desirable": "yes"}).status_code == 422  # a thumb is true or false
        assert post({**label, "reason": "x" * 2001}).status_code == 422
        assert post({**label, "response_id": "p-cats-r9"}).status_code == 422
        assert post({**label, "item_id": "never-served"}).status_code == 409
        ranking = {"item_id": item["item_id"], "order": [response_id], "tied_with_above": [False]}
        assert post(ranking, "/api/submit").status_code == 422  # one response is no ranking
        saved = post({**label, "reason": "  "})
        assert saved.status_code == 200 and saved.json()["stored"], saved.text
        assert saved.json()["progress"]["done"] == 1
        assert post({**label, "reason": None}).json()["duplicate"]  # the same label again: saved once
        assert post({**label, "desirable": False}).status_code == 409  # a changed mind after saving: refused
        labels = binary_store.binary_labels()
        assert labels[["response_id", "desirable"]].values.tolist() == [[response_id, True]]
        assert labels["reason"].isna().all()
        assert next_binary_item(server)["item_id"] != item["item_id"]  # not served again


def test_a_ranking_item_refuses_a_label(binary_store):
    with serving(binary_store) as server:
        item = next_item(server)
        while len(item["responses"]) == 1:  # label the cats responses until the owls ranking comes
            body = {"item_id": item["item_id"], "response_id": item["responses"][0]["response_id"], "desirable": True}
            assert httpx.post(f"{server}/api/label", headers=AUTH, json=body).status_code == 200
            item = next_item(server)
        refused = httpx.post(
            f"{server}/api/label",
            headers=AUTH,
            json={"item_id": item["item_id"], "response_id": item["responses"][0]["response_id"], "desirable": False},
        )
        assert refused.status_code == 422 and "asks for a ranking" in refused.json()["detail"]
    assert len(binary_store.binary_labels()) == 3 and binary_store.waiting_items() == 1


def test_labels_and_rankings_sent_while_the_store_is_busy_are_drained_together_once(binary_store):
    """A stage holds the store: a thumbs down and a ranking are acknowledged from the journal, then
    one drain writes both kinds (a label and a ranking), each once."""
    from filelock import FileLock

    from rlhf.annotation.journal import Journal, journal_path

    with serving(binary_store) as server:
        sent = []
        with FileLock(str(binary_store.path) + ".lock"):  # what a pipeline stage holds while it writes
            for _ in range(4):  # three labels and the ranking, in whichever order the queue serves them
                item = next_item(server)
                ids = [r["response_id"] for r in item["responses"]]
                if len(ids) == 1:
                    body = {"item_id": item["item_id"], "response_id": ids[0], "desirable": False, "reason": "vague"}
                    answer = httpx.post(f"{server}/api/label", headers=AUTH, json=body)
                else:
                    body = {"item_id": item["item_id"], "order": ids, "tied_with_above": [False] * len(ids)}
                    answer = httpx.post(f"{server}/api/submit", headers=AUTH, json=body)
                assert answer.status_code == 200 and answer.json()["saved"] and not answer.json()["stored"]
                sent.append(item["item_id"])
            assert next_item(server) is None  # the page's copy of the queue knows what alice sent
        wait_for(lambda: Journal(journal_path(binary_store)).pending_count() == 0, timeout=30)
    labels = binary_store.binary_labels()
    assert len(labels) == 3 and not labels["desirable"].any() and set(labels["reason"]) == {"vague"}
    modes = binary_store.query("SELECT mode, count(*) AS n FROM annotation_events GROUP BY mode ORDER BY mode")
    assert modes.values.tolist() == [["binary", 3], ["rank", 1]]
    assert binary_store.query("SELECT count(*) AS n FROM rankings WHERE judge = 'human'")["n"][0] == 3
    assert binary_store.waiting_items() == 0 and len(sent) == 4

"""Annotation at team scale, on the real page (uvicorn on 127.0.0.1, headless Chromium) over a real
DuckDB store: overlap, guidelines, number keys, pairwise mode, suggestions, tokens and revocation."""

import hashlib
import json

import httpx
import pandas as pd
import pytest

from rlhf.annotation.annotators import add_annotator, hash_token, import_tokens, sign_in
from rlhf.annotation.guidelines import load_guidelines, principles_from_params
from rlhf.cli import main
from rlhf.errors import InputError
from rlhf.ranking import QUEUE_COLUMNS, RANKING_COLUMNS, queue_item
from rlhf.store import FeedbackStore
from tests.support.annotation_page import OTHER_TOKEN, PROMPTS, TOKEN, count, response_rows, serving, wait_for

# The page tests' fixtures: a store with two queued items of three responses, and headless Chromium.

pytestmark = pytest.mark.browser


def text_of(browser, element_id: str) -> str:
    return browser.execute_script("return document.getElementById(arguments[0]).innerText", element_id)


def shown_ids(browser) -> list[str]:
    return [row.get_attribute("data-id") for row in response_rows(browser)]


def open_page(browser, address: str, token: str, rows: int = 3) -> None:
    """A fresh load (about:blank first: a new #fragment alone would not reload the page)."""
    browser.get("about:blank")
    browser.get(f"{address}/#token={token}")
    wait_for(lambda: len(response_rows(browser)) == rows)


def human_ranks(store, annotator: str) -> dict[str, int]:
    rows = store.query(
        "SELECT response_id, rank FROM rankings WHERE judge = 'human' AND judge_version = ?", [annotator]
    )
    return dict(zip(rows["response_id"], rows["rank"]))


def ranked_event(store, annotator: str) -> tuple:
    return tuple(
        store.query(
            "SELECT from_suggestion, mode FROM annotation_events WHERE annotator = ? AND action = 'ranked'", [annotator]
        ).iloc[0]
    )


# --- assignment with overlap ---


def test_two_annotators_rank_one_item_under_overlap_two_and_it_leaves_the_queue_after_the_second(store, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    store.set_overlap(2)
    carol = add_annotator(store, "carol")
    with serving(store) as address:
        open_page(browser, address, TOKEN)
        assert text_of(browser, "who") == "Signed in as alice"
        first_prompt = browser.find_element(By.ID, "prompt").text
        response_rows(browser)[0].send_keys(Keys.ENTER)
        wait_for(lambda: text_of(browser, "progress") == "1 of 2 done")
        assert browser.find_element(By.ID, "prompt").text != first_prompt  # alice never sees it again
        assert store.waiting_items() == 2  # one person of two: the item still waits
        assert text_of(browser, "queue") == "Queue: 2 of 2 items still wait for people"

        open_page(browser, address, OTHER_TOKEN)
        assert text_of(browser, "who") == "Signed in as bob"
        assert browser.find_element(By.ID, "prompt").text == first_prompt  # the open item goes to bob
        response_rows(browser)[0].send_keys(Keys.ENTER)
        wait_for(lambda: text_of(browser, "progress") == "1 of 2 done")
        assert store.waiting_items() == 1  # two people ranked it: it left the queue
        assert text_of(browser, "queue") == "Queue: 1 of 2 items still wait for people"

        # A third person is served only what is still open.
        seen = httpx.get(f"{address}/api/next", headers={"Authorization": f"Bearer {carol}"}).json()
        assert seen["item"]["prompt"] != first_prompt
        assert seen["progress"] == {"done": 0, "total": 1, "queue_items": 2, "queue_waiting": 1}
    ranked = store.query("SELECT item_id, count(*) AS n FROM annotation_events WHERE action = 'ranked' GROUP BY 1")
    assert ranked["n"].tolist() == [2]


def item_with_ai_margins(prompt_id: str, scores: list[float]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """An AI ranking of a prompt's three responses with these scores, and the queue item of them."""
    ids = [f"{prompt_id}-r{i}" for i in range(3)]
    ranks = [1 + sum(other > score for other in scores) for score in scores]
    rankings = pd.DataFrame(
        [
            (f"ai-{prompt_id}", rid, prompt_id, rank, score, "{}", "rules", "1")
            for rid, rank, score in zip(ids, ranks, scores)
        ],
        columns=RANKING_COLUMNS,
    )
    return rankings, pd.DataFrame([queue_item(prompt_id, ids, "low_confidence")], columns=QUEUE_COLUMNS)


def ingest_ai(store, rankings: pd.DataFrame, queue: pd.DataFrame | None = None) -> None:
    no_prompts = pd.DataFrame(columns=["prompt_id", "prompt", "topic", "split", "source"])
    no_responses = pd.DataFrame(
        columns=["response_id", "prompt_id", "sample_index", "response", "policy_checkpoint", "sampling"]
    )
    store.ingest({"run_id": "ai-run", "stage": "test"}, no_prompts, no_responses, rankings, queue)


def test_the_ai_judges_closest_calls_come_first_and_unlabelled_items_last(store):
    # p-cats: the judge scored two responses 0.1 apart (a close call); p-owls: nothing closer than 1.
    cats, _ = item_with_ai_margins("p-cats", [1.0, 0.9, 0.0])
    owls, _ = item_with_ai_margins("p-owls", [2.0, 1.0, 0.0])
    ingest_ai(store, pd.concat([owls, cats]))
    assert store.next_item("alice")["prompt_id"] == "p-cats"
    # An item no AI judge labelled comes after both, whatever its age.
    with store.transaction() as con:
        con.execute("DELETE FROM comparisons WHERE prompt_id = 'p-cats'")
    assert store.next_item("alice")["prompt_id"] == "p-owls"


# --- guidelines ---


GUIDELINES_MD = """# How we rank

Prefer the answer that **stays on topic**.

<script>window.pwned = 3</script>

<img src=x onerror="window.pwned = 4">
"""


def test_guidelines_render_as_text_and_a_script_in_them_stays_inert(store, browser, tmp_path, project_root):
    from selenium.webdriver.common.by import By

    markdown = tmp_path / "guidelines.md"
    markdown.write_text(GUIDELINES_MD)
    guidelines = load_guidelines(principles_from_params(project_root / "params.yaml"), markdown)
    with serving(store, guidelines=guidelines) as address:
        open_page(browser, address, TOKEN)
        dialog = browser.find_element(By.ID, "guidelines-dialog")
        wait_for(lambda: dialog.get_attribute("open") is not None)  # shown on first open
        text = dialog.text
        assert "on topic" in text and "mentions the topic the prompt asks about (counts 2x)" in text
        assert 'contains none of: "whatever", "stupid", "dunno"' in text
        assert "<script>window.pwned = 3</script>" in text and 'onerror="window.pwned = 4"' in text  # as text
        assert dialog.find_element(By.CSS_SELECTOR, "h1").text == "How we rank"  # the markdown rendered
        assert dialog.find_element(By.CSS_SELECTOR, "strong").text == "stays on topic"
        assert count(browser, ".guidelines script, .guidelines img, .guidelines [onerror]") == 0
        assert browser.execute_script("return window.pwned === undefined")

        browser.find_element(By.ID, "guidelines-ok").click()
        wait_for(lambda: dialog.get_attribute("open") is None)
        panel = browser.find_element(By.ID, "guidelines-panel")
        assert panel.is_displayed() and "stays on topic" in panel.text  # beside the task
        open_page(browser, address, TOKEN)  # seen: not shown again on the next open
        assert browser.find_element(By.ID, "guidelines-dialog").get_attribute("open") is None
        assert browser.find_element(By.ID, "guidelines-panel").is_displayed()
        assert browser.execute_script("return window.pwned === undefined")


# --- faster hands: number keys and pairwise mode ---


def test_number_keys_put_the_focused_response_at_that_rank(store, browser):
    from selenium.webdriver.common.keys import Keys

    with serving(store) as address:
        open_page(browser, address, TOKEN)
        r0, r1, r2 = shown_ids(browser)
        response_rows(browser)[2].click()
        response_rows(browser)[2].send_keys("1")  # the last to the top
        assert shown_ids(browser) == [r2, r0, r1]
        response_rows(browser)[1].send_keys("3")  # r0 to the bottom
        assert shown_ids(browser) == [r2, r1, r0]
        response_rows(browser)[0].send_keys("9")  # past the end: nothing moves
        assert shown_ids(browser) == [r2, r1, r0]
        response_rows(browser)[0].send_keys(Keys.ENTER)
        wait_for(lambda: text_of(browser, "progress") == "1 of 2 done")
    assert human_ranks(store, "alice") == {r2: 1, r1: 2, r0: 3}
    assert ranked_event(store, "alice") == (False, "rank")


def test_pairwise_choices_become_the_ranking_in_the_store(store, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    with serving(store) as address:
        open_page(browser, address, TOKEN)
        r0, r1, r2 = shown_ids(browser)
        wanted = {r1: 1, r0: 2, r2: 2}  # r1 best; r0 and r2 equally good
        response_rows(browser)[0].send_keys("p")
        choices = 0
        while browser.find_element(By.ID, "pair-view").is_displayed():
            a = browser.find_element(By.ID, "pair-a").get_attribute("data-id")
            b = browser.find_element(By.ID, "pair-b").get_attribute("data-id")
            assert a != b and not browser.find_element(By.ID, "rank-view").is_displayed()  # two at a time
            key = "a" if wanted[a] < wanted[b] else "b" if wanted[a] > wanted[b] else "t"
            browser.switch_to.active_element.send_keys(key)
            choices += 1
            assert choices <= 3, "more choices than binary insertion needs for three responses"
        assert shown_ids(browser) == [r1, r0, r2]
        assert [row.find_element(By.CLASS_NAME, "rank").text for row in response_rows(browser)] == ["1", "2", "2"]
        browser.switch_to.active_element.send_keys(Keys.ENTER)
        wait_for(lambda: text_of(browser, "progress") == "1 of 2 done")
    assert human_ranks(store, "alice") == wanted
    assert ranked_event(store, "alice") == (False, "pairwise")


# --- suggestions ---


def test_suggestions_are_off_by_default_and_a_suggested_start_is_recorded(store, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    rankings = pd.DataFrame(
        [
            (f"ai-{pid}", f"{pid}-r{i}", pid, rank, -rank, "{}", "rules", "1")
            for pid in PROMPTS
            for i, rank in enumerate([3, 1, 1])
        ],
        columns=RANKING_COLUMNS,
    )
    ingest_ai(store, rankings)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with serving(store) as address:  # off by default: the page shows the queue's own order
        item = httpx.get(f"{address}/api/next", headers=headers).json()["item"]
        assert "suggestion" not in item
        refused = httpx.post(
            f"{address}/api/submit",
            headers=headers,
            json={
                "item_id": item["item_id"],
                "order": [r["response_id"] for r in item["responses"]],
                "tied_with_above": [False] * 3,
                "from_suggestion": True,
            },
        )
        assert refused.status_code == 422
    with serving(store, suggestions=True) as address:
        open_page(browser, address, TOKEN)
        pid = shown_ids(browser)[0].rsplit("-", 1)[0]
        assert shown_ids(browser) == [f"{pid}-r1", f"{pid}-r2", f"{pid}-r0"]  # the AI's order, its tie kept
        assert [row.find_element(By.CLASS_NAME, "rank").text for row in response_rows(browser)] == ["1", "1", "3"]
        assert browser.execute_script("return !document.getElementById('suggested').hidden")
        response_rows(browser)[0].send_keys(Keys.ENTER)
        wait_for(lambda: text_of(browser, "progress") == "1 of 2 done")
    assert human_ranks(store, "alice") == {f"{pid}-r1": 1, f"{pid}-r2": 1, f"{pid}-r0": 3}
    assert ranked_event(store, "alice") == (True, "rank")


# --- annotators: tokens stored hashed, revocable; the page shows who is signed in ---


def test_a_revoked_token_is_refused(store, browser, capsys):
    from selenium.webdriver.common.by import By

    path = str(store.path)
    assert main(["annotate", "--store", path, "add-annotator", "dave"]) == 0
    token = capsys.readouterr().out.strip()
    assert len(token) >= 40
    stored = store.query("SELECT token_sha256, annotator, revoked_at FROM annotator_tokens WHERE annotator = 'dave'")
    assert stored["token_sha256"].tolist() == [hashlib.sha256(token.encode()).hexdigest()]
    assert token not in json.dumps(store.query("SELECT * FROM annotator_tokens").astype(str).values.tolist())
    assert main(["annotate", "--store", path, "add-annotator", "dave"]) == 2  # one live token per name
    assert "already has a token" in capsys.readouterr().err

    with serving(store) as address:
        headers = {"Authorization": f"Bearer {token}"}
        assert httpx.get(f"{address}/api/next", headers=headers).json()["annotator"] == "dave"
        open_page(browser, address, token)
        assert text_of(browser, "who") == "Signed in as dave"

        assert main(["annotate", "--store", path, "revoke", "dave"]) == 0
        refused = httpx.get(f"{address}/api/next", headers=headers)
        assert refused.status_code == 401 and refused.json()["detail"] == "token revoked"
        browser.get("about:blank")
        browser.get(f"{address}/#token={token}")
        wait_for(lambda: text_of(browser, "status") == "Token revoked.")
        assert browser.find_element(By.ID, "login").is_displayed()
        assert not browser.find_element(By.ID, "task").is_displayed() and text_of(browser, "who") == ""
        assert httpx.get(f"{address}/api/next", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    # A tokens file that still lists the revoked token does not bring it back.
    assert import_tokens(store, {token: "dave"}, "tokens-file:old.json") == 0
    assert sign_in(store, token) == (None, "token revoked")
    capsys.readouterr()
    assert main(["annotate", "--store", path, "status"]) == 0
    status = capsys.readouterr().out
    assert "dave" in status and "revoked" in status and "alice" in status


def test_a_tokens_file_is_stored_hashed_once_and_bad_names_are_refused(tmp_path):
    store = FeedbackStore(tmp_path / "feedback.duckdb")
    tokens = {"a-long-random-token-for-alice": "alice"}
    assert import_tokens(store, tokens, "tokens-file:annotators.json") == 1
    assert import_tokens(store, tokens, "tokens-file:annotators.json") == 0  # idempotent
    assert sign_in(store, "a-long-random-token-for-alice") == ("alice", "")
    assert sign_in(store, "") == (None, "token refused")
    rows = store.query("SELECT token_sha256, source FROM annotator_tokens")
    assert rows.values.tolist() == [[hash_token("a-long-random-token-for-alice"), "tokens-file:annotators.json"]]
    with pytest.raises(InputError, match="annotator name"):
        add_annotator(store, " padded ")
    assert main(["annotate", "--store", str(store.path), "revoke", "nobody"]) == 2


def test_overlap_is_a_store_setting_that_must_be_positive(tmp_path):
    store = FeedbackStore(tmp_path / "feedback.duckdb")
    assert store.overlap() is None
    store.set_overlap(3)
    assert FeedbackStore(store.path).overlap() == 3  # kept in the file, for the pipeline and the flow
    store.set_overlap(None)
    assert store.overlap() is None
    with pytest.raises(Exception, match="overlap must be 1 or more"):
        store.set_overlap(0)

"""The ranking page under test: its fixture data, the server on a free port, and the browser helpers."""

import contextlib
import time

import uvicorn

from rlhf.annotation.app import create_app
from tests.support.servers import free_port, running

TOKEN, OTHER_TOKEN = "alice-token-0123456789", "bob-token-0123456789ab"


PROMPTS = {"p-owls": "tell me about owls . answer :", "p-cats": "tell me about cats . answer :"}

PAYLOAD = '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">'
RESPONSES = {
    "p-owls": ["owls hunt at night , thanks", "whatever", PAYLOAD],
    "p-cats": ["cats purr", "cats sleep a lot , glad to help", "dunno"],
}


@contextlib.contextmanager
def serving(store, **options):
    """The page over `store` (create_app's `options`), served on a free port of 127.0.0.1; yields its address."""
    port = free_port()
    app = create_app(store, {TOKEN: "alice", OTHER_TOKEN: "bob"}, **options)
    with running(
        uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")), port
    ) as address:
        yield address


def wait_for(predicate, timeout=10.0):
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, "timed out waiting for the page"
        time.sleep(0.05)


def response_rows(browser):
    from selenium.webdriver.common.by import By

    return browser.find_elements(By.CSS_SELECTOR, "#responses li")


def count(browser, selector) -> int:
    return browser.execute_script("return document.querySelectorAll(arguments[0]).length", selector)


# Rows as code before conversations wrote them: the store gives them their messages (schema 4).
PLAIN_RESPONSE_COLUMNS = ["response_id", "prompt_id", "sample_index", "response", "policy_checkpoint", "sampling"]

TEST_RUN = {"run_id": "test-run", "stage": "test"}


def store_with_page_responses(path, split: str):
    """A store holding PROMPTS (in `split`) and their RESPONSES, nothing queued yet."""
    import pandas as pd

    from rlhf.frames import RANKING_COLUMNS
    from rlhf.store import FeedbackStore

    store = FeedbackStore(path)
    prompts = pd.DataFrame(
        [(pid, text, None, split, "test") for pid, text in PROMPTS.items()],
        columns=["prompt_id", "prompt", "topic", "split", "source"],
    )
    responses = pd.DataFrame(
        [
            (f"{pid}-r{i}", pid, i, text, "ckpt", "{}")
            for pid, texts in RESPONSES.items()
            for i, text in enumerate(texts)
        ],
        columns=PLAIN_RESPONSE_COLUMNS,
    )
    store.ingest(TEST_RUN, prompts, responses, pd.DataFrame(columns=RANKING_COLUMNS))
    return store

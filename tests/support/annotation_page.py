"""The ranking page under test: its fixture data, the server on a free port, and the browser helpers."""

import contextlib
import socket
import threading
import time

import uvicorn

from rlhf.annotation.app import create_app

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
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = create_app(store, {TOKEN: "alice", OTHER_TOKEN: "bob"}, **options)
    uvicorn_server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uvicorn_server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not uvicorn_server.started:
        assert time.time() < deadline, "the page did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        uvicorn_server.should_exit = True
        thread.join(timeout=10)


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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# Rows as code before conversations wrote them: the store gives them their messages (schema 4).
PLAIN_RESPONSE_COLUMNS = ["response_id", "prompt_id", "sample_index", "response", "policy_checkpoint", "sampling"]

"""Shared by several test modules."""

import json
import shutil

import pandas as pd
import pytest

from rlhf.ranking import RANKING_COLUMNS
from rlhf.store import FeedbackStore
from rlhf.text import content_id
from tests.support.annotation_page import PLAIN_RESPONSE_COLUMNS, PROMPTS, RESPONSES


@pytest.fixture
def store(tmp_path):
    store = FeedbackStore(tmp_path / "feedback.duckdb")
    prompts = pd.DataFrame(
        [(pid, text, None, "train", "test") for pid, text in PROMPTS.items()],
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
    run = {"run_id": "test-run", "stage": "test"}
    store.ingest(run, prompts, responses, pd.DataFrame(columns=RANKING_COLUMNS))
    items = pd.DataFrame(
        [
            (content_id(pid, *ids), pid, json.dumps(ids), "human")
            for pid in PROMPTS
            for ids in [[f"{pid}-r{i}" for i in range(3)]]
        ],
        columns=["item_id", "prompt_id", "response_ids", "reason"],
    )
    assert store.enqueue(run, items) == 2
    assert store.enqueue(run, items) == 0  # idempotent
    return store


@pytest.fixture
def browser(tmp_path):
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("needs Debian's chromium and chromium-driver (.ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    driver.implicitly_wait(10)
    yield driver
    driver.quit()

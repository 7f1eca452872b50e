"""Shared by several test modules."""

import json

import pandas as pd
import pytest

from rlhf.text import content_id
from tests.support.annotation_page import PROMPTS, TEST_RUN, store_with_page_responses
from tests.support.browser import headless_chromium


@pytest.fixture
def store(tmp_path):
    store = store_with_page_responses(tmp_path / "feedback.duckdb", "train")
    run = TEST_RUN
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
    with headless_chromium(tmp_path / "chromium-profile") as driver:
        yield driver

"""Shared by several test modules."""

import json

import pandas as pd
import pytest

from rlhf.ranking import RANKING_COLUMNS
from rlhf.store import FeedbackStore
from rlhf.text import content_id
from tests.support.annotation_page import PLAIN_RESPONSE_COLUMNS, PROMPTS, RESPONSES
from tests.support.browser import headless_chromium


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
    with headless_chromium(tmp_path / "chromium-profile") as driver:
        yield driver

"""Prompt collection: formats, dedup, stable splits, and clear errors for bad files."""

import pytest

from rlhf.errors import PromptSourceError
from rlhf.prompts import demo_prompts, file_prompts, finalize, split_of


def test_split_is_stable_and_near_the_fraction():
    prompts = demo_prompts()
    splits = [split_of(p, 0.2) for p in prompts["prompt"]]
    assert splits == [split_of(p, 0.2) for p in prompts["prompt"]]
    assert 0.1 < splits.count("test") / len(splits) < 0.3


def test_jsonl_is_deduplicated_and_stripped(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": " hello "}\n{"prompt": "hello"}\n\n{"prompt": "bye"}\n')
    prompts = finalize(file_prompts(path), 0.0, None)
    assert sorted(prompts["prompt"]) == ["bye", "hello"] and set(prompts["split"]) == {"train"}


def test_malformed_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "ok"}\n{"prompt": oops}\n')
    with pytest.raises(PromptSourceError, match=r"p.jsonl:2: not valid JSON"):
        file_prompts(path)


def test_missing_column_is_named(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("text\nhello\n")
    with pytest.raises(PromptSourceError, match=r"p.csv: missing column 'prompt'"):
        file_prompts(path)


def test_empty_file_is_refused(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "   "}\n')
    with pytest.raises(PromptSourceError, match="no prompts left"):
        finalize(file_prompts(path), 0.2, None)

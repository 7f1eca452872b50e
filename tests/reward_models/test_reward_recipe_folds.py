"""The reward-recipe bench's validation folds: every train prompt is held out exactly once, the test
split never, and five folds' first is the single validation split the earlier candidates were read on."""

from __future__ import annotations

import hashlib

import pandas as pd
import pytest

from bench.reward_recipe import VALIDATION_SHARE, in_validation, tuning_split, validation_fold

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def comparisons() -> pd.DataFrame:
    prompts = [f"prompt-{i}" for i in range(400)]
    return pd.DataFrame(
        {
            "prompt_id": [p for p in prompts for _ in range(2)],  # two pairs per prompt
            "split": ["test" if i % 5 == 0 else "train" for i in range(400) for _ in range(2)],
        }
    )


def test_each_train_prompt_is_held_out_in_exactly_one_fold_and_no_test_prompt_is_read(comparisons):
    folds = 5
    held_out = [tuning_split(comparisons, fold, folds) for fold in range(folds)]
    train_prompts = set(comparisons.loc[comparisons["split"] == "train", "prompt_id"])
    seen: list[str] = []
    for split in held_out:
        assert set(split["prompt_id"]) == train_prompts  # the test split's prompts are not there at all
        validation = split[split["split"] == "test"]
        seen += sorted(set(validation["prompt_id"]))
        # a prompt's pairs stay together: none of a held-out prompt's pairs is trained on
        assert not set(validation["prompt_id"]) & set(split.loc[split["split"] == "train", "prompt_id"])
        assert 0.1 < len(validation) / len(split) < 0.3  # about a fifth each, by the hash
    assert sorted(seen) == sorted(train_prompts)


def in_the_single_validation_split(prompt_id: str) -> bool:
    """How the bench chose its validation prompts before it had folds: a hash below VALIDATION_SHARE."""
    digest = hashlib.sha256(f"validation:{prompt_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < VALIDATION_SHARE


def test_the_first_of_five_folds_is_the_single_validation_split(comparisons):
    assert round(1 / VALIDATION_SHARE) == 5
    for prompt_id in comparisons["prompt_id"]:
        assert (validation_fold(prompt_id, 5) == 0) == in_the_single_validation_split(prompt_id)
        assert in_validation(prompt_id) == in_the_single_validation_split(prompt_id)  # label_efficiency's
    single = tuning_split(comparisons)  # the default: the single split
    held_out = single.loc[single["split"] == "test", "prompt_id"]
    assert len(held_out) and held_out.map(in_the_single_validation_split).all()

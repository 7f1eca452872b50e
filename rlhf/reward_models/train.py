"""Reward model: Bradley-Terry on comparisons, K-wise per ranking or pairwise (TRL), and scoring with it;
from thumbs up/down instead of pairs, or beside them (`train_reward.labels`, rlhf.reward_models.binary).

The model reads the conversation and response rendered with its own tokenizer (rlhf.scoring) and
returns one scalar. By default it starts from the bootstrap policy's weights (InstructGPT
initialises its RM from the SFT model) with a new head; `train_reward.backbone` starts it from any
sequence-classifier backbone instead, and `train: false` takes a trained reward model as it is.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from accelerate.utils import gather_object
from datasets import Dataset
from peft import LoraConfig, TaskType, get_peft_model
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from trl import RewardConfig, RewardTrainer

from rlhf.config import TrainRewardParams
from rlhf.errors import EmptyComparisonsError, InputError
from rlhf.launch import shards_weights, start_sharded_engine_on_cpu, zero_stage
from rlhf.machine import peak_rss_mb
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
from rlhf.reward_models.resumable import MarkWholeCheckpoints, RewardCheckpoints
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
    checkpoints: RewardCheckpoints | None = None,
) -> dict | None:
    """Train on the train split's strict pairs, or binary labels, or both (`params.labels`), save to
    out_dir, and report on the test split: held-out pairs, and held-out binary labels where given.
    In a multi-process run (`params.launcher`) every process trains; the main one saves, reports
    and returns the metrics, the others return None. `checkpoints`: where the run resumes from.

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
    members, losses, peaks = [], [], []
    started = time.perf_counter()
    for member in range(params.ensemble):
        member_tracker = tracker.with_prefix(f"member{member}/") if tracker and params.ensemble > 1 else tracker
        model, loss, peaks = train_one(
            train,
            pairs,
            tokenizer,
            init_from,
            params,
            seed + member,
            device,
            progress,
            member_tracker,
            labels_train,
            (checkpoints, member) if checkpoints else None,
        )
        if model is None:  # not the main process of a multi-process run
            return None
        members.append(model.eval())
        losses.append(loss)
    train_wall_s = round(time.perf_counter() - started, 1)  # model loads, engine set-up and steps
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
        "launcher": params.launcher,
        "train_wall_s": train_wall_s,
        "peak_rss_mb_per_process": peaks,  # each process's, at the end of the last member's training
        **report,
    }


# Every judge name the project writes on a ranking: rank_responses' judges (rlhf.config), people
# (rlhf.store.HUMAN_JUDGE), a deployed model's users (rlhf.store.exchanges.DEPLOYED_JUDGE) and
# UltraFeedback's GPT-4 ratings (rlhf.importers.AI_RATED_JUDGE); tests/reward_models keeps it whole.
PROJECT_JUDGES = frozenset({"rules", "llm", "openai", "reward_model", "human", "deployed", "ultrafeedback"})


def train_pairs(comparisons: pd.DataFrame, params: TrainRewardParams) -> pd.DataFrame:
    """The train split's pairs from `params.label_sources`; EmptyComparisonsError if none is strict."""
    train = comparisons[comparisons["split"] == "train"]
    if params.label_sources is not None:
        judges = sorted(comparisons["judge"].unique())
        # A misspelt source beside a known one would otherwise train on fewer labels without a word;
        # a judge of this project's that labels nothing yet (deployed, before anyone used the model) is no typo.
        unknown = [s for s in params.label_sources if s not in judges and s not in PROJECT_JUDGES]
        train = train[train["judge"].isin(params.label_sources)]
        if unknown or train.empty:
            raise EmptyComparisonsError(
                f"train_reward.label_sources: no train pairs labelled by {unknown or params.label_sources} "
                f"(the snapshot's judges: {judges})"
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
    resume: tuple[RewardCheckpoints, int] | None = None,
) -> tuple[PreTrainedModel | None, float, list[float]]:
    """One reward model from `init_from` with a fresh head: (model, mean training loss, each
    process's peak resident MiB), the model None on a process other than the main one. `labels`:
    binary labels to train on beside `pairs` (or instead of them: `train` and `pairs` None).
    `resume`: the checkpoints and this member's number in them."""
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
        train_loss, peaks = stats["train_loss"], [round(peak_rss_mb(), 1)]
    else:
        trained = train_with_trl(model, tokenizer, pairs, params, seed, device, tracker, labels, resume)
        if trained.state is None:
            return None, trained.loss, trained.peaks
        if trained.state:  # gathered from the processes' shards: into a plain model of the same build
            model = load_scalar_head_model(init_from, device, tokenizer.pad_token_id)
            model.load_state_dict(trained.state)
        train_loss, peaks = trained.loss, trained.peaks
    if params.lora_rank:
        model = model.merge_and_unload()  # a plain model again: PPO, judges and evaluate load it as is
    model.config.scoring_max_length = params.max_length  # scoring cuts where training did (rlhf.scoring)
    return model, train_loss, peaks


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


@dataclass
class TrainedWeights:
    """What one Trainer run leaves in this process. `state`: None on a process other than the main
    one; empty where the model passed in trained whole in place (one process, DDP, ZeRO-2); else the
    whole weights gathered from ZeRO-3's or FSDP's shards. `peaks`: every process's peak resident MiB."""

    state: dict[str, torch.Tensor] | None
    loss: float
    peaks: list[float]


def train_with_trl(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: pd.DataFrame,
    params: TrainRewardParams,
    seed: int,
    device: torch.device,
    tracker: Tracker | None = None,
    labels: pd.DataFrame | None = None,
    resume: tuple[RewardCheckpoints, int] | None = None,
) -> TrainedWeights:
    """Plain pairwise Bradley-Terry with TRL's RewardTrainer, or with binary `labels` its subclass
    whose loss adds (or, `pairs` None, is) the binary loss (rlhf.reward_models.binary). Under a
    multi-process launcher the Trainer runs on the launcher's engine, each process taking its share
    of every step's `params.batch_size` pairs; with `resume`, it checkpoints every
    `params.checkpoint_every` steps and starts from the newest whole checkpoint."""
    sharded = start_sharded_engine_on_cpu(params.launcher, device)
    checkpoints, member = resume if resume else (None, 0)
    checkpointing = checkpoints is not None and params.checkpoint_every > 0
    args = RewardConfig(
        output_dir=str(checkpoints.member_dir(member)) if checkpoints else tempfile.mkdtemp(prefix="reward-"),
        num_train_epochs=params.epochs,
        per_device_train_batch_size=params.batch_size // params.num_processes,
        learning_rate=params.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,  # a float below 1 is a share of the total steps
        logging_steps=10,
        save_strategy="steps" if checkpointing else "no",
        save_steps=params.checkpoint_every or 1,
        save_total_limit=2,  # the newest, and the one before it while the newest is being written
        report_to=[],  # the trackers get the logs through rlhf.tracking's callback
        seed=seed,
        use_cpu=device.type == "cpu" and not sharded,
        # On a CPU the Trainer keeps the gloo group start_sharded_engine_on_cpu made, instead of
        # starting one without a backend (one process, rlhf/launch.py says why).
        accelerator_config={"use_configured_state": sharded},
        bf16=False,
        gradient_checkpointing=False,
        max_length=None,  # tokenized_pairs cut them already, as scoring does
    )
    newest = checkpoints.newest(member) if checkpointing else None
    callbacks = [tracker.trainer_callback(resumed=newest is not None)] if tracker else []
    if checkpointing:
        callbacks.append(MarkWholeCheckpoints())
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
    if newest is not None and trainer.is_world_process_zero():
        print(f"train_reward: resuming from {newest}", flush=True)
    loss = round(trainer.train(resume_from_checkpoint=str(newest) if newest else None).training_loss, 4)
    if params.launcher == "single":
        return TrainedWeights({}, loss, [round(peak_rss_mb(), 1)])
    accelerator = trainer.accelerator
    whole = accelerator.get_state_dict(trainer.model_wrapped) if shards_weights(accelerator) else {}
    peaks = [round(peak, 1) for peak in gather_object([peak_rss_mb()])]
    # Every process leaves the group together (a gloo peer gone early can abort the others).
    accelerator.wait_for_everyone()
    main = accelerator.is_main_process
    accelerator.end_training()
    if zero_stage(accelerator):
        # The Trainer registered its DeepSpeed config with transformers, which would otherwise load
        # every later model (the plain one the gathered weights go into) already partitioned.
        from transformers.integrations import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()
    return TrainedWeights(whole if main else None, loss, peaks)


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

"""Reward model: Bradley-Terry on comparisons, K-wise per ranking or pairwise (TRL), and scoring with it.

The model reads `text.join(prompt, response)` plus EOS and returns one scalar. It starts from the
bootstrap policy's weights (InstructGPT initialises its RM from the SFT model), with a new head.
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
from rlhf.errors import EmptyComparisonsError
from rlhf.models import load_scalar_head_model, load_tokenizer
from rlhf.reward_kwise import rankings_from_comparisons, train_on_rankings
from rlhf.reward_ensemble import RewardEnsemble, save_reward_models
from rlhf.reward_report import render_reward_distribution, reward_report
from rlhf.text import join


def preference_pairs(comparisons: pd.DataFrame) -> pd.DataFrame:
    """Strict pairs only (ties carry no preference), as full texts."""
    strict = comparisons[~comparisons["tie"]]
    return pd.DataFrame(
        {
            "chosen": [join(p, c) for p, c in zip(strict["prompt"], strict["chosen"])],
            "rejected": [join(p, r) for p, r in zip(strict["prompt"], strict["rejected"])],
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
) -> dict:
    """Train on the train split's strict pairs, save to out_dir, and report on the test split.

    The split is by prompt, so no held-out pair shares a prompt with a training pair.
    """
    train = comparisons[comparisons["split"] == "train"]
    pairs = preference_pairs(train)
    if pairs.empty:
        raise EmptyComparisonsError("comparisons snapshot: no non-tie pairs in the train split")
    tokenizer = load_tokenizer(init_from)
    members, losses = [], []
    for member in range(params.ensemble):
        model, loss = train_one(train, pairs, tokenizer, init_from, params, seed + member, device, progress)
        members.append(model.eval())
        losses.append(loss)
    save_reward_models(members, tokenizer, out_dir)
    test = comparisons[comparisons["split"] == "test"]
    scorer = members[0] if len(members) == 1 else RewardEnsemble(members)
    report = evaluate_reward_model(scorer, tokenizer, test, distribution_png)
    if len(members) > 1:  # does the ensemble help? each member alone, on the same held-out pairs
        alone = [evaluate_reward_model(m, tokenizer, test, None)["test_accuracy"] for m in members]
        report.update(ensemble=len(members), member_test_accuracy_mean=round(sum(alone) / len(alone), 4))
    train_loss = round(sum(losses) / len(losses), 4)
    return {"batching": params.batching, "train_pairs": len(pairs), "train_loss": train_loss, **report}


def train_one(
    train: pd.DataFrame, pairs: pd.DataFrame, tokenizer: PreTrainedTokenizerBase, init_from: Path,
    params: TrainRewardParams, seed: int, device: torch.device, progress: Callable[[int, int], None] | None,
) -> tuple[PreTrainedModel, float]:  # fmt: skip
    """One reward model from `init_from` with a fresh head: (model, mean training loss)."""
    torch.manual_seed(seed)
    model = load_scalar_head_model(init_from, device, tokenizer.pad_token_id)
    if params.lora_rank:
        model = with_lora(model, params)
    if params.batching == "kwise":
        stats = train_on_rankings(
            model, tokenizer, rankings_from_comparisons(train), epochs=params.epochs, batch_size=params.batch_size,
            learning_rate=params.learning_rate, max_length=params.max_length, seed=seed, progress=progress,
        )  # fmt: skip
        train_loss = stats["train_loss"]
    else:
        train_loss = train_with_trl(model, tokenizer, pairs, params, seed, device)
    if params.lora_rank:
        model = model.merge_and_unload()  # a plain model again: PPO, judges and evaluate load it as is
    return model, train_loss


def with_lora(model: PreTrainedModel, params: TrainRewardParams) -> PreTrainedModel:
    """LoRA adapters on every linear layer; peft's sequence-classification task trains the head fully."""
    config = LoraConfig(
        task_type=TaskType.SEQ_CLS, r=params.lora_rank, lora_alpha=params.lora_alpha, lora_dropout=0.0,
        target_modules="all-linear",
    )  # fmt: skip
    return get_peft_model(model, config)


def train_with_trl(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, pairs: pd.DataFrame, params: TrainRewardParams,
    seed: int, device: torch.device,
) -> float:  # fmt: skip
    """Plain pairwise Bradley-Terry with TRL's RewardTrainer; returns the mean training loss."""
    args = RewardConfig(
        output_dir=tempfile.mkdtemp(prefix="reward-"),
        num_train_epochs=params.epochs,
        per_device_train_batch_size=params.batch_size,
        learning_rate=params.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,  # a float below 1 is a share of the total steps
        logging_steps=10,
        save_strategy="no",
        report_to=[],
        seed=seed,
        use_cpu=device.type == "cpu",
        bf16=False,
        gradient_checkpointing=False,
        max_length=params.max_length,
    )
    trainer = RewardTrainer(
        model=model, args=args, train_dataset=Dataset.from_pandas(pairs), processing_class=tokenizer
    )
    return round(trainer.train().training_loss, 4)


def evaluate_reward_model(
    model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, comparisons: pd.DataFrame, distribution_png: Path | None
) -> dict:
    """Accuracy, calibration, accuracy by label source and by margin on strict held-out pairs (rlhf.reward_report)."""
    strict = comparisons[~comparisons["tie"]]
    pairs = preference_pairs(strict)
    chosen = score_texts(model, tokenizer, list(pairs["chosen"])).cpu().numpy()
    rejected = score_texts(model, tokenizer, list(pairs["rejected"])).cpu().numpy()
    if distribution_png is not None and len(pairs):
        render_reward_distribution(chosen, rejected, distribution_png)
    return reward_report(strict.reset_index(drop=True), chosen, rejected)


@torch.no_grad()
def score_texts(
    model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, texts: list[str], batch_size: int = 128
) -> torch.Tensor:
    """Reward of each full text (prompt joined with response).  (N,)"""
    device = next(model.parameters()).device
    scores = []
    for start in range(0, len(texts), batch_size):
        chunk = [t + tokenizer.eos_token for t in texts[start : start + batch_size]]
        batch = tokenizer(chunk, return_tensors="pt", padding=True, padding_side="right").to(device)
        scores.append(model(**batch).logits[:, 0].float())
    return torch.cat(scores) if scores else torch.zeros(0)


def pair_accuracy(chosen: list[float], rejected: list[float]) -> float:
    """How often a score orders a pair as the judge did; equal scores count half."""
    if not chosen:
        return float("nan")
    hits = [1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(chosen, rejected)]
    return sum(hits) / len(hits)


def accuracy_on(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, comparisons: pd.DataFrame
) -> tuple[float, int]:
    """(accuracy, pairs): how often the model scores the judge's chosen response higher, on strict pairs."""
    pairs = preference_pairs(comparisons)
    chosen = score_texts(model, tokenizer, list(pairs["chosen"])).tolist()
    rejected = score_texts(model, tokenizer, list(pairs["rejected"])).tolist()
    return pair_accuracy(chosen, rejected), len(pairs)

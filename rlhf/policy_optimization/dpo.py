"""Direct Preference Optimisation (Rafailov et al., 2023) with TRL's DPOTrainer.

DPO trains the policy on the comparisons snapshot itself, with no reward model and no sampling:
loss = -log sigmoid(beta * [(log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x))]).
The bracket, times beta, is the implicit reward margin; it starts at 0 when the policy starts as
the reference and should grow. The reference is the bootstrap (SFT) policy, as for PPO's KL.

Pairs are the train split's strict pairs (ties carry no preference); the test split's pairs
measure the implicit reward margin and accuracy before and after training.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd
from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback
from trl import DPOConfig, DPOTrainer

from rlhf import chat
from rlhf.config import DPOParams
from rlhf.errors import EmptyComparisonsError
from rlhf.tracking import Tracker

# The names TRL's DPOTrainer logs, and ours in the curve file.
LOGGED = {"loss": "loss", "rewards/margins": "reward_margin", "rewards/accuracies": "reward_accuracy"}


@dataclass
class DPOResult:
    history: list[dict]  # one row per logged step: step, loss, reward_margin, reward_accuracy
    metrics: dict  # train_pairs, held-out margin and accuracy before and after, wall_s


def dpo_pairs(comparisons: pd.DataFrame, tokenizer: PreTrainedTokenizerBase) -> pd.DataFrame:
    """prompt / chosen / rejected texts of the strict pairs: the prompt rendered with the policy's
    chat template (rlhf.chat.render_prompt), as PPO and sampling render it; the completion starts
    with a space, as the policy samples it after the demo's "answer :"."""
    strict = comparisons[~comparisons["tie"]]
    return pd.DataFrame(
        {
            "prompt": [chat.render_prompt(tokenizer, chat.from_json(m)) for m in strict["prompt_messages"]],
            "chosen": [" " + text.strip() for text in strict["chosen"]],
            "rejected": [" " + text.strip() for text in strict["rejected"]],
        }
    )


class _Progress(TrainerCallback):
    def __init__(self, report: Callable[[int, int], None]):
        self.report = report

    def on_log(self, args, state, control, **kwargs):
        self.report(state.global_step, state.max_steps)


def train_dpo(
    policy: PreTrainedModel,
    reference: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    comparisons: pd.DataFrame,
    params: DPOParams,
    seed: int,
    progress: Callable[[int, int], None] | None = None,
    tracker: Tracker | None = None,
) -> DPOResult:
    """Train `policy` in place on the train split's pairs; measure on the test split's."""
    train = dpo_pairs(comparisons[comparisons["split"] == "train"], tokenizer)
    held_out = dpo_pairs(comparisons[comparisons["split"] == "test"], tokenizer)
    if train.empty:
        raise EmptyComparisonsError("comparisons snapshot: no non-tie pairs in the train split for DPO")
    device = next(policy.parameters()).device
    args = DPOConfig(
        output_dir=tempfile.mkdtemp(prefix="dpo-"),
        beta=params.beta,
        num_train_epochs=params.epochs,
        per_device_train_batch_size=params.batch_size,
        per_device_eval_batch_size=max(params.batch_size, 32),
        learning_rate=params.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
        max_length=params.max_length,
        logging_steps=max(1, params.log_every),
        save_strategy="no",
        eval_strategy="no",
        report_to=[],  # the trackers get the logs through rlhf.tracking's callback
        seed=seed,
        use_cpu=device.type == "cpu",
        bf16=device.type == "cuda",
        gradient_checkpointing=False,
    )
    trainer = DPOTrainer(
        model=policy,
        ref_model=reference,
        args=args,
        train_dataset=Dataset.from_pandas(train),
        eval_dataset=Dataset.from_pandas(held_out) if len(held_out) else None,
        processing_class=tokenizer,
        callbacks=[*([_Progress(progress)] if progress else []), *([tracker.trainer_callback()] if tracker else [])],
    )
    before = _held_out(trainer, held_out)
    started = time.perf_counter()
    trainer.train()
    wall_s = time.perf_counter() - started
    after = _held_out(trainer, held_out)
    history = [
        {"step": row["step"], **{ours: row[theirs] for theirs, ours in LOGGED.items() if theirs in row}}
        for row in trainer.state.log_history
        if "rewards/margins" in row
    ]
    metrics = {
        "train_pairs": len(train),
        "held_out_pairs": len(held_out),
        **{f"{name}_before": value for name, value in before.items()},
        **{f"{name}_after": value for name, value in after.items()},
        "train_wall_s": round(wall_s, 1),
    }
    return DPOResult(history, metrics)


def _held_out(trainer: DPOTrainer, held_out: pd.DataFrame) -> dict:
    """Implicit reward margin and preference accuracy on the held-out pairs."""
    if held_out.empty:
        return {}
    logged = trainer.evaluate()  # the Trainer's evaluation loop runs without gradients
    return {"held_out_margin": logged["eval_rewards/margins"], "held_out_accuracy": logged["eval_rewards/accuracies"]}

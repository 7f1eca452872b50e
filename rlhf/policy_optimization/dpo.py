"""Direct Preference Optimisation (Rafailov et al., 2023) with TRL's DPOTrainer.

DPO trains the policy on the comparisons snapshot itself, with no reward model and no sampling:
loss = -log sigmoid(beta * [(log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x))]).
The bracket, times beta, is the implicit reward margin; it starts at 0 when the policy starts as
the reference and should grow. The reference is the bootstrap (SFT) policy, as for PPO's KL.

Pairs are the train split's strict pairs (ties carry no preference); the test split's pairs
measure the implicit reward margin and accuracy before and after training.

DPO scores exactly what the policy samples after exactly the prompt it saw, so the pairs reach
TRL as token ids (`dpo_pairs`), not as text: TRL would tokenise a rendered prompt with the special
tokens again (a template that writes BOS then gets two), and a conversation through the template
ends ChatML's and Gemma's completions with the newline after the turn end, a token the policy
never samples (it stops at the turn end). Here the prompt ids are `rlhf.sampling.prompt_batch`'s,
and a completion is the exchange's tokens after them (rlhf.chat.render_exchange, tokenised in
context), cut after the first stop token (rlhf.chat.stop_token_ids), or ended with EOS where the
rendering writes none (the plain format). `_PreTokenizedDPOTrainer` hands those ids to TRL's
collator and loss unchanged; everything else is TRL's (tests/policy_optimization/test_dpo_oracle.py checks its loss
and gradients against ours). The store keeps a response's text, not the ids the policy drew, so
"what the policy samples" is the tokenizer's own encoding of that text in context: where the
policy drew a non-canonical split of a word, DPO scores the canonical one.
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
from rlhf.scoring import frame_exchanges
from rlhf.tracking import Tracker

# The names TRL's DPOTrainer logs, and ours in the curve file.
LOGGED = {"loss": "loss", "rewards/margins": "reward_margin", "rewards/accuracies": "reward_accuracy"}


@dataclass
class DPOResult:
    history: list[dict]  # one row per logged step: step, loss, reward_margin, reward_accuracy
    metrics: dict  # train_pairs, held-out margin and accuracy before and after, wall_s


def prompt_ids(tokenizer: PreTrainedTokenizerBase, conversation: chat.Conversation) -> list[int]:
    """The ids the policy continues: `rlhf.sampling.prompt_batch`'s for this one conversation."""
    text = chat.render_prompt(tokenizer, conversation)
    return tokenizer(text, add_special_tokens=chat.add_special_tokens_for(tokenizer))["input_ids"]


def completion_ids(
    tokenizer: PreTrainedTokenizerBase, conversation: chat.Conversation, response, stop_ids: list[int]
) -> list[int]:
    """The tokens the policy samples for `response` after `prompt_ids(conversation)`: the
    exchange's rendering tokenised in context, after the prompt's tokens, up to and including the
    first stop token; a rendering that writes none (the plain format) gets the tokenizer's EOS."""
    prompt_text, completion_text = chat.split_exchange(tokenizer, conversation, response, "DPO")
    exchange = prompt_text + completion_text
    special = chat.add_special_tokens_for(tokenizer)
    prompt = tokenizer(prompt_text, add_special_tokens=special)["input_ids"]
    whole = tokenizer(exchange, add_special_tokens=special)["input_ids"]
    if whole[: len(prompt)] == prompt:
        completion = whole[len(prompt) :]
    else:  # a token merged across the boundary, or a post-processor's token ended the prompt: the rest alone
        completion = tokenizer(completion_text, add_special_tokens=False)["input_ids"]
    stops = [i for i, token in enumerate(completion) if token in stop_ids]
    if stops:
        return completion[: stops[0] + 1]
    return completion + [tokenizer.eos_token_id if tokenizer.eos_token_id is not None else stop_ids[0]]


def dpo_pairs(
    comparisons: pd.DataFrame, tokenizer: PreTrainedTokenizerBase, stop_ids: list[int] | None = None
) -> pd.DataFrame:
    """prompt_ids / chosen_ids / rejected_ids of the strict pairs, as the policy reads and samples
    them (module docstring). `stop_ids`: the policy's (rlhf.chat.stop_token_ids(tokenizer, policy));
    the tokenizer's own by default."""
    stop_ids = stop_ids or chat.stop_token_ids(tokenizer)
    strict = comparisons[~comparisons["tie"]]
    conversations, chosen = frame_exchanges(strict, "chosen")
    _, rejected = frame_exchanges(strict, "rejected")
    return pd.DataFrame(
        {
            "prompt_ids": [prompt_ids(tokenizer, c) for c in conversations],
            "chosen_ids": [completion_ids(tokenizer, c, r, stop_ids) for c, r in zip(conversations, chosen)],
            "rejected_ids": [completion_ids(tokenizer, c, r, stop_ids) for c, r in zip(conversations, rejected)],
        }
    )


class _PreTokenizedDPOTrainer(DPOTrainer):
    """TRL's DPOTrainer on datasets that already hold prompt_ids / chosen_ids / rejected_ids
    (`dpo_pairs`): TRL's own preparation (EOS appended, the text tokenised again) is skipped. As
    TRL does, a pair whose prompt alone fills max_length is dropped (keep_start truncation would
    leave it no completion token)."""

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        if args.max_length is not None and args.truncation_mode == "keep_start":
            dataset = dataset.filter(lambda example: len(example["prompt_ids"]) < args.max_length)
        return dataset


def offline_training_args(name: str, params, seed: int, device) -> dict:
    """The TRL trainer arguments DPO and KTO share (their `dpo` / `kto` section: epochs, batch size,
    learning rate, max length, logging): a cosine schedule after 5% warmup, no checkpoints or
    evaluation of TRL's own, logs to our trackers only, bf16 on CUDA."""
    return {
        "output_dir": tempfile.mkdtemp(prefix=f"{name}-"),
        "num_train_epochs": params.epochs,
        "per_device_train_batch_size": params.batch_size,
        "per_device_eval_batch_size": max(params.batch_size, 32),
        "learning_rate": params.learning_rate,
        "lr_scheduler_type": "cosine",
        "warmup_steps": 0.05,
        "max_length": params.max_length,
        "logging_steps": max(1, params.log_every),
        "save_strategy": "no",
        "eval_strategy": "no",
        "report_to": [],  # the trackers get the logs through rlhf.tracking's callback
        "seed": seed,
        "use_cpu": device.type == "cpu",
        "bf16": device.type == "cuda",
        "activation_checkpointing": False,  # transformers 5's name for gradient checkpointing
    }


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
    trainer, train, held_out = dpo_trainer(policy, reference, tokenizer, comparisons, params, seed, progress, tracker)
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


def dpo_trainer(
    policy: PreTrainedModel,
    reference: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    comparisons: pd.DataFrame,
    params: DPOParams,
    seed: int,
    progress: Callable[[int, int], None] | None = None,
    tracker: Tracker | None = None,
) -> tuple[DPOTrainer, pd.DataFrame, pd.DataFrame]:
    """(TRL's trainer over our token ids, train pairs, held-out pairs) of `train_dpo`."""
    stop_ids = chat.stop_token_ids(tokenizer, policy)
    train = dpo_pairs(comparisons[comparisons["split"] == "train"], tokenizer, stop_ids)
    held_out = dpo_pairs(comparisons[comparisons["split"] == "test"], tokenizer, stop_ids)
    if train.empty:
        raise EmptyComparisonsError("comparisons snapshot: no non-tie pairs in the train split for DPO")
    device = next(policy.parameters()).device
    args = DPOConfig(**offline_training_args("dpo", params, seed, device), beta=params.beta)
    trainer = _PreTokenizedDPOTrainer(
        model=policy,
        ref_model=reference,
        args=args,
        train_dataset=Dataset.from_pandas(train),
        eval_dataset=Dataset.from_pandas(held_out) if len(held_out) else None,
        processing_class=tokenizer,
        callbacks=[*([_Progress(progress)] if progress else []), *([tracker.trainer_callback()] if tracker else [])],
    )
    return trainer, train, held_out


def _held_out(trainer: DPOTrainer, held_out: pd.DataFrame) -> dict:
    """Implicit reward margin and preference accuracy on the held-out pairs."""
    if held_out.empty:
        return {}
    logged = trainer.evaluate()  # the Trainer's evaluation loop runs without gradients
    return {"held_out_margin": logged["eval_rewards/margins"], "held_out_accuracy": logged["eval_rewards/accuracies"]}

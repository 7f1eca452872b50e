"""Kahneman-Tversky Optimisation (Ethayarajh et al., 2024, "KTO: Model Alignment as Prospect
Theoretic Optimization") with TRL's KTOTrainer.

KTO learns from responses judged alone, desirable or not, so a thumbs up or down is a training
example by itself. With r(x, y) = log pi(y|x) - log ref(y|x) and z0 the policy's KL to the
reference, estimated on the batch's mismatched (prompt, response) pairs, clamped at 0 and not
differentiated (the reference point), the loss of eq. (7) is

    L = E_{x,y}[ lambda_y - v(x, y) ],  v = lambda_D sigmoid(beta (r - z0))  if y is desirable
                                           lambda_U sigmoid(beta (z0 - r))  if y is undesirable

which TRL writes as lambda_y * (1 - sigmoid(...)) and averages over the batch. lambda_D and
lambda_U weigh the two sides where the labels are unbalanced: the paper (eq. 8) and TRL's docs
recommend lambda_D n_D / (lambda_U n_U) in [1, 4/3]; `kto_weights` picks 1 (`train_policy.kto`).

Where the labels come from (`train_policy.kto.labels`):
- comparisons (the default): the snapshot's strict pairs unpaired with TRL's
  `unpair_preference_dataset` (each pair's chosen response desirable, its rejected one
  undesirable), then one row per response, as the store keeps one row per response: a K-way
  ranking gives a response K - 1 pairs, so the TRL unpairing alone would repeat each response
  up to K - 1 times and label the middle ones both ways. Here a response is desirable where it
  wins more of its pairs than it loses, undesirable where it loses more, and left out where even
  (on the demo's 8-way rankings: the top half desirable, the bottom half undesirable).
- binary: the store's thumbs up/down (the `binary_labels` table) as the snapshot holds them.

As DPO (dpo.py's module docstring), the examples reach TRL as the token ids the policy reads and
samples (dpo.prompt_ids / dpo.completion_ids), not as text. `_PreTokenizedKTOTrainer` then does
what TRL's own preparation would do after tokenising: drop an example whose prompt alone fills
max_length, and give each example the completion of the one before it in its batch for the KL
estimate. TRL requires sequential batches for that pairing (so every epoch sees one order); the
examples are shuffled once with the seed so that a batch mixes prompts instead of holding one
prompt's responses, whose "mismatched" pairs would not be mismatched.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from trl import KTOConfig, KTOTrainer
from trl.data_utils import unpair_preference_dataset

from rlhf import chat
from rlhf.config import KTOParams, Params
from rlhf.errors import EmptyComparisonsError, InputError
from rlhf.policy_optimization.dpo import _Progress, completion_ids, offline_training_args, prompt_ids
from rlhf.policy_optimization.from_inputs import STAGE, PolicyInputs, PolicyOutcome
from rlhf.scoring import frame_exchanges
from rlhf.snapshot import BINARY_LABELS, read_comparisons
from rlhf.tracking import Tracker

# The names TRL's KTOTrainer logs, and ours in the curve file.
LOGGED = {
    "loss": "loss",
    "rewards/margins": "reward_margin",
    "rewards/chosen": "reward_desirable",
    "rewards/rejected": "reward_undesirable",
    "kl": "kl",
}
KTO_CURVE_COLUMNS = ["loss", "reward_margin", "reward_desirable", "reward_undesirable", "kl"]
# What a response carries from the comparisons snapshot into its unpaired row (when the frame has it).
RESPONSE_COLUMNS = {"prompt": "prompt", "prompt_messages": "prompt_messages", "split": "split"}


@dataclass
class KTOResult:
    history: list[dict]  # one row per logged step: step and LOGGED's names
    metrics: dict  # examples and their balance, the weights, held-out margin and KL before and after, wall_s


def kto_weights(params: KTOParams, n_desirable: int, n_undesirable: int) -> tuple[float, float]:
    """(lambda_D, lambda_U): the numbers params give, and each `auto` one solved so that
    lambda_D n_D / (lambda_U n_U) = 1, the lower end of the KTO paper's [1, 4/3] (eq. 8). Both
    auto: the rarer side's weight is n_more / n_rarer and the other's 1. With no example on one
    side there is nothing to balance: an auto weight is 1."""
    desirable, undesirable = params.desirable_weight, params.undesirable_weight
    if n_desirable == 0 or n_undesirable == 0:
        return (1.0 if desirable == "auto" else desirable), (1.0 if undesirable == "auto" else undesirable)
    if desirable == "auto" and undesirable == "auto":
        if n_desirable < n_undesirable:
            return n_undesirable / n_desirable, 1.0
        return 1.0, n_desirable / n_undesirable
    if desirable == "auto":
        return undesirable * n_undesirable / n_desirable, undesirable
    if undesirable == "auto":
        return desirable, desirable * n_desirable / n_undesirable
    return desirable, undesirable


def unpaired_from_comparisons(comparisons: pd.DataFrame) -> pd.DataFrame:
    """One row per response of the strict pairs, labelled by its wins and losses (module
    docstring): prompt, prompt_messages, completion, completion_messages, label, split (the
    columns the frame has), ordered by response id."""
    strict = comparisons[~comparisons["tie"]]
    if strict.empty:
        return pd.DataFrame(columns=["prompt", "completion", "label"])
    # TRL's unpairing: each pair -> (chosen, desirable) and (rejected, undesirable).
    pairs = Dataset.from_dict({"chosen": list(strict["chosen_id"]), "rejected": list(strict["rejected_id"])})
    unpaired = unpair_preference_dataset(pairs).to_pandas()
    votes = unpaired.groupby("completion")["label"].agg(["sum", "count"])
    wins, losses = votes["sum"], votes["count"] - votes["sum"]
    labels = pd.Series(wins > losses, index=votes.index)[wins != losses]
    texts = pd.concat([_response_rows(strict, "chosen"), _response_rows(strict, "rejected")])
    texts = texts.drop_duplicates("response_id").set_index("response_id")
    rows = texts.loc[labels.index.sort_values()].assign(label=labels)
    return rows.reset_index(drop=True)


def _response_rows(pairs: pd.DataFrame, side: str) -> pd.DataFrame:
    """Each pair's `side` response as an unpaired row without its label."""
    columns = {f"{side}_id": "response_id", side: "completion", **RESPONSE_COLUMNS}
    if f"{side}_messages" in pairs:
        columns[f"{side}_messages"] = "completion_messages"
    return pairs[[c for c in columns if c in pairs]].rename(columns=columns)


def kto_examples(
    unpaired: pd.DataFrame, tokenizer: PreTrainedTokenizerBase, stop_ids: list[int] | None = None
) -> pd.DataFrame:
    """prompt_ids / completion_ids / label of labelled responses, as the policy reads and samples
    them (dpo.py). `unpaired`: TRL's unpaired format, prompt / completion / label, with the
    prompt_messages and completion_messages columns where the prompts are conversations."""
    stop_ids = stop_ids or chat.stop_token_ids(tokenizer)
    conversations, responses = frame_exchanges(unpaired, "completion")
    return pd.DataFrame(
        {
            "prompt_ids": [prompt_ids(tokenizer, c) for c in conversations],
            "completion_ids": [completion_ids(tokenizer, c, r, stop_ids) for c, r in zip(conversations, responses)],
            "label": [bool(label) for label in unpaired["label"]],
        }
    )


class _PreTokenizedKTOTrainer(KTOTrainer):
    """TRL's KTOTrainer on datasets that already hold prompt_ids / completion_ids / label
    (`kto_examples`); what TRL's preparation does after its tokenising is done here the same way."""

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        if args.max_length is not None:  # the prompt alone fills max_length: no completion token would be left
            dataset = dataset.filter(lambda example: len(example["prompt_ids"]) < args.max_length)
        if self.calculate_KL:
            # TRL's KL pairs: within each batch, example i gets example i-1's completion (the first, the last's).
            def mismatched(batch):
                batch["KL_completion_ids"] = [batch["completion_ids"][-1]] + batch["completion_ids"][:-1]
                return batch

            dataset = dataset.map(mismatched, batched=True, batch_size=args.per_device_train_batch_size)
        return dataset


def kto_trainer(
    policy: PreTrainedModel,
    reference: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    unpaired: pd.DataFrame,
    params: KTOParams,
    seed: int,
    progress: Callable[[int, int], None] | None = None,
    tracker: Tracker | None = None,
) -> tuple[KTOTrainer, pd.DataFrame, pd.DataFrame]:
    """(TRL's trainer over our token ids, train examples, held-out examples) of `train_kto`: the
    train split's labelled responses train, the test split's measure (all train without a split)."""
    stop_ids = chat.stop_token_ids(tokenizer, policy)
    split = unpaired["split"] if "split" in unpaired else pd.Series("train", index=unpaired.index)
    # Shuffled once with the seed: TRL's batches are sequential (module docstring).
    train = kto_examples(unpaired[split == "train"], tokenizer, stop_ids).sample(frac=1.0, random_state=seed)
    held_out = kto_examples(unpaired[split == "test"], tokenizer, stop_ids).sample(frac=1.0, random_state=seed)
    if train.empty:
        raise EmptyComparisonsError("KTO: no labelled responses in the train split")
    desirable_weight, undesirable_weight = kto_weights(params, int(train["label"].sum()), int((~train["label"]).sum()))
    device = next(policy.parameters()).device
    args = KTOConfig(
        **offline_training_args("kto", params, seed, device),
        beta=params.beta,
        desirable_weight=desirable_weight,
        undesirable_weight=undesirable_weight,
    )
    trainer = _PreTokenizedKTOTrainer(
        model=policy,
        ref_model=reference,
        args=args,
        train_dataset=Dataset.from_pandas(train, preserve_index=False),
        eval_dataset=Dataset.from_pandas(held_out, preserve_index=False) if len(held_out) else None,
        processing_class=tokenizer,
        callbacks=[*([_Progress(progress)] if progress else []), *([tracker.trainer_callback()] if tracker else [])],
    )
    return trainer, train, held_out


def train_kto(
    policy: PreTrainedModel,
    reference: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    unpaired: pd.DataFrame,
    params: KTOParams,
    seed: int,
    progress: Callable[[int, int], None] | None = None,
    tracker: Tracker | None = None,
) -> KTOResult:
    """Train `policy` in place on the train split's labelled responses; measure on the test split's."""
    trainer, train, held_out = kto_trainer(policy, reference, tokenizer, unpaired, params, seed, progress, tracker)
    before = _held_out(trainer, held_out)
    started = time.perf_counter()
    trainer.train()
    wall_s = time.perf_counter() - started
    after = _held_out(trainer, held_out)
    history = [
        {"step": row["step"], **{ours: row[theirs] for theirs, ours in LOGGED.items() if theirs in row}}
        for row in trainer.state.log_history
        if "kl" in row and "loss" in row
    ]
    metrics = {
        "train_examples": len(train),
        "train_desirable": int(train["label"].sum()),
        "train_undesirable": int((~train["label"]).sum()),
        "desirable_weight": trainer.desirable_weight,
        "undesirable_weight": trainer.undesirable_weight,
        "held_out_examples": len(held_out),
        **{f"{name}_before": value for name, value in before.items()},
        **{f"{name}_after": value for name, value in after.items()},
        "train_wall_s": round(wall_s, 1),
    }
    return KTOResult(history, metrics)


def _held_out(trainer: KTOTrainer, held_out: pd.DataFrame) -> dict:
    """Implicit reward margin (desirable minus undesirable) and the KL estimate on the held-out examples."""
    if held_out.empty:
        return {}
    logged = trainer.evaluate()  # the Trainer's evaluation loop runs without gradients
    return {"held_out_margin": logged.get("eval_rewards/margins"), "held_out_kl": logged.get("eval_kl")}


def labelled_responses(params: Params, comparisons_dir: str | Path) -> pd.DataFrame:
    """The unpaired examples `train_policy.kto.labels` names: those the comparisons snapshot's
    pairs give, or the binary labels snapshot beside it (already TRL's unpaired format)."""
    if params.train_policy.kto.labels == "comparisons":
        return unpaired_from_comparisons(read_comparisons(comparisons_dir))
    path = Path(comparisons_dir) / BINARY_LABELS
    if not path.is_file():
        raise InputError(
            f"{path}: no binary labels snapshot; train_policy.kto.labels binary trains on it "
            "(store_comparisons writes it)"
        )
    return pd.read_parquet(path)


def train_from_inputs(
    params: Params, inputs: PolicyInputs, model_dir: str, live_dir: str, progress: Callable[[int, int], None]
) -> PolicyOutcome:
    """The train_policy stage's KTO, as from_inputs.train_offline is its DPO: the policy from the
    round's start, the bootstrap policy as reference, the labelled responses `labelled_responses` reads."""
    from accelerate.utils import set_seed

    from rlhf.machine import peak_rss_mb
    from rlhf.policy_optimization.models import count_parameters
    from rlhf.pretrained import load_policy, load_tokenizer, resolve_device

    config = params.train_policy
    with Tracker(
        STAGE, params.tracking, live_dir, {STAGE: config.model_dump(mode="json")}, tables=("samples",)
    ) as tracker:
        device = resolve_device(params.device)
        set_seed(params.seed)
        tokenizer = load_tokenizer(inputs.policy_dir)
        policy = load_policy(inputs.policy_dir, device)
        print(f"{STAGE}: KTO, beta {config.kto.beta}, {count_parameters(policy)[1]:,} parameters", flush=True)
        result = train_kto(
            policy,
            load_policy(inputs.reference_dir, device),
            tokenizer,
            labelled_responses(params, inputs.comparisons),
            config.kto,
            params.seed,
            progress=progress,
            tracker=tracker,
        )
        policy.save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
    history = [{"iteration": row["step"], **row} for row in result.history]
    metrics = {"algorithm": "kto", "labels": config.kto.labels, **result.metrics}
    metrics["peak_rss_mb"] = round(peak_rss_mb(), 1)
    return PolicyOutcome(history, KTO_CURVE_COLUMNS, metrics)

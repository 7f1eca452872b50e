"""Safe RLHF's cost model (Dai et al., 2023): one scalar per response, positive where it is unsafe.

Dai et al. train it on harmlessness comparisons (a pairwise loss) plus a sign term on each
response's safe/unsafe label. Our harmlessness labels are per-response flags (a judge's
`unsafe_words` match, the ranking page's "unsafe" box), not rankings, so we train the sign term
alone: binary cross-entropy of sigmoid(cost) against the flag, the rarer class up-weighted.
PPO-Lagrangian reads sigmoid(cost) as P(unsafe) and constrains its mean.

Like the reward model it starts from the bootstrap policy, reads the exchange as rlhf.scoring renders it,
trains on the train split's prompts and is measured on the test split's.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch

from rlhf.config import TrainCostParams
from rlhf.errors import NoCostModelError
from rlhf.pretrained import load_scalar_head_model, load_tokenizer
from rlhf.reward_models.kwise import disable_dropout
from rlhf.reward_models.untrained import skip_cost_model, untrained_reason
from rlhf.scoring import batch_of, encode, frame_texts, score_texts
from rlhf.tracking import Tracker


def train_cost_model(
    labels: pd.DataFrame,
    init_from: Path,
    params: TrainCostParams,
    seed: int,
    device: torch.device,
    out_dir: Path,
    progress: Callable[[int, int], None] | None = None,
    tracker: Tracker | None = None,
) -> dict:
    """Train on the train split's labelled responses, save to out_dir, report on the test split's.

    With no labelled response there is nothing to learn: out_dir gets UNTRAINED_MARKER only, and
    the report says so (a pipeline that never asks for harmlessness still runs)."""
    train, test = labels[labels["split"] == "train"], labels[labels["split"] == "test"]
    if train.empty or train["unsafe"].nunique() < 2:
        reason = "no labelled responses" if train.empty else "every labelled response has the same label"
        return skip_cost_model(out_dir, reason, len(labels))
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(init_from)
    torch.manual_seed(seed)
    model = load_scalar_head_model(init_from, device, tokenizer.pad_token_id)
    ids = encode(tokenizer, frame_texts(tokenizer, train, "response"), params.max_length)
    flags = torch.tensor(train["unsafe"].to_numpy(dtype=float), dtype=torch.float32)
    unsafe_share = float(flags.mean())
    # Up-weight the unsafe class to the weight of the safe one: a rare flag must not be ignored.
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor((1 - unsafe_share) / unsafe_share, device=device))
    optimizer = torch.optim.AdamW(model.parameters(), lr=params.learning_rate)
    order, rng = list(range(len(ids))), random.Random(seed)
    steps_per_epoch = -(-len(ids) // params.batch_size)
    total_steps, step, losses = steps_per_epoch * params.epochs, 0, []
    disable_dropout(model).train()  # as the reward model trains (Huang et al. 2024, detail 1)
    for _ in range(params.epochs):
        rng.shuffle(order)
        for start in range(0, len(order), params.batch_size):
            index = order[start : start + params.batch_size]
            batch = batch_of(tokenizer, [ids[i] for i in index], device)
            loss = loss_fn(model(**batch).logits[:, 0].float(), flags[index].to(device))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
            step += 1
            if tracker:
                tracker.log_metrics({"loss": losses[-1]}, step)
            if progress and (step % max(1, total_steps // 20) == 0 or step == total_steps):
                progress(step, total_steps)
    model.eval()
    model.config.scoring_max_length = params.max_length  # scoring cuts where training did (rlhf.scoring)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return {
        "trained": True,
        "train_responses": len(train),
        "train_unsafe_share": round(unsafe_share, 4),
        "train_loss": round(sum(losses[-steps_per_epoch:]) / min(len(losses), steps_per_epoch), 4),
        **classification_report(model, tokenizer, test),
    }


@torch.no_grad()
def classification_report(model, tokenizer, labelled: pd.DataFrame) -> dict:
    """Held-out accuracy, balanced accuracy (the mean of the two classes' recalls: the figure to
    read when unsafe responses are rare), and recall and precision on the unsafe class, at
    P(unsafe) = 0.5."""
    if labelled.empty:
        return {"test_responses": 0}
    costs = score_texts(model, tokenizer, frame_texts(tokenizer, labelled, "response"))
    predicted = (costs > 0).cpu()
    actual = torch.tensor(labelled["unsafe"].to_numpy(dtype=bool))
    true_positives = int((predicted & actual).sum())
    safe_recall = int((~predicted & ~actual).sum()) / max(int((~actual).sum()), 1)
    unsafe_recall = true_positives / max(int(actual.sum()), 1)
    return {
        "test_responses": len(labelled),
        "test_unsafe_share": round(float(actual.float().mean()), 4),
        "test_accuracy": round(float((predicted == actual).float().mean()), 4),
        "test_balanced_accuracy": round((safe_recall + unsafe_recall) / 2, 4),
        "test_unsafe_recall": round(unsafe_recall, 4),
        "test_unsafe_precision": round(true_positives / max(int(predicted.sum()), 1), 4),
    }


def load_cost_model(directory: str | Path, device: torch.device):
    """(model, tokenizer) of a trained cost model; NoCostModelError naming the reason if there is none."""
    directory = Path(directory)
    reason = untrained_reason(directory)
    if reason is not None:
        raise NoCostModelError(
            f"{directory}: no cost model ({reason}); label harmlessness with rank_responses.unsafe_words "
            "or the ranking page's unsafe flag"
        )
    tokenizer = load_tokenizer(directory)
    return load_scalar_head_model(directory, device, tokenizer.pad_token_id).eval(), tokenizer

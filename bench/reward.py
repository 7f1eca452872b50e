"""Reward-model training: K-wise batching against plain pairwise, on the same data, alternating.

    python bench/reward.py [--k 4] [--rankings-per-prompt 4] [--epochs 2] [--repeats 3]

Data: the demo domain's prompts, K sampled responses each (several rankings per prompt), ranked
by the rule judge of params.yaml; ties dropped; 20% of prompts held out (split by prompt). Both
sides train the same randomly initialised tiny GPT-2 reward model (the demo tokenizer), with the
same loop, optimizer, schedule, epochs and pairs per optimizer step; only the batching differs:
K-wise scores each ranking's K responses once for all its pairs, pairwise scores 2 texts per
pair. The two sides alternate (K-wise, pairwise, K-wise, ...) over `--repeats` runs each, in one
process, so that load on the machine falls on both (one run under load read 0.99x where quiet runs
read 2.33x). Prints one JSON line: per side the median, min and max of pairs/s and the median
held-out accuracy; `ratio` is the ratio of the medians, `paired_ratio` the median (min, max) of the
ratios of each adjacent (K-wise, pairwise) pair. Target ratio >= 1.5 with held-out accuracy no worse.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np
import pandas as pd
import torch
from transformers import GPT2Config, GPT2ForSequenceClassification

from rlhf.config import load_params
from rlhf.demo import domain
from rlhf.demo.tokenizer import train_tokenizer
from rlhf.judges import RuleJudge
from rlhf.machine import machine
from rlhf.reward_models.kwise import as_pairs, rankings_from_comparisons, train_on_rankings
from rlhf.reward_models.pairs import preference_pairs
from rlhf.reward_models.report import accuracy
from rlhf.scoring import score_texts
from rlhf.text import content_id


def comparisons_frame(k: int, rankings_per_prompt: int, seed: int) -> pd.DataFrame:
    judge = RuleJudge(load_params(ROOT / "params.yaml").rank_responses.principles)
    rng, rows = random.Random(seed), []
    for prompt, topic in domain.all_prompts():
        split = "test" if int(content_id(prompt)[:8], 16) % 5 == 0 else "train"
        for round_ in range(rankings_per_prompt):
            responses = [domain.sample_response(topic, rng) for _ in range(k)]
            scores = [judge.score(prompt, topic, r)[0] for r in responses]
            ranking_id = content_id(prompt, round_)
            ids = [content_id(ranking_id, i) for i in range(k)]
            for i in range(k):
                for j in range(i + 1, k):
                    better, worse = (i, j) if scores[i] >= scores[j] else (j, i)
                    rows.append(
                        {
                            "ranking_id": ranking_id,
                            "prompt": prompt,
                            "split": split,
                            "judge": "rules",
                            "chosen_id": ids[better],
                            "rejected_id": ids[worse],
                            "chosen": responses[better],
                            "rejected": responses[worse],
                            "margin": scores[better] - scores[worse],
                            "tie": scores[i] == scores[j],
                        }
                    )
    return pd.DataFrame(rows)


def held_out_accuracy(model, tokenizer, test: pd.DataFrame) -> float:
    pairs = preference_pairs(test, tokenizer)
    chosen = score_texts(model, tokenizer, list(pairs["chosen"])).numpy()
    rejected = score_texts(model, tokenizer, list(pairs["rejected"])).numpy()
    return accuracy(chosen - rejected)


def spread(values: list[float], digits: int = 1) -> dict:
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--rankings-per-prompt", type=int, default=4)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--rankings-per-step", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each side, alternating (3 or more to measure)")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.repeats < 3:
        print(f"--repeats {args.repeats}: a smoke test, not a measurement (use 3 or more)", file=sys.stderr)
    comparisons = comparisons_frame(args.k, args.rankings_per_prompt, args.seed)
    train, test = comparisons[comparisons["split"] == "train"], comparisons[comparisons["split"] == "test"]
    tokenizer = train_tokenizer(domain.corpus(seed=args.seed, size=2000), vocab_size=1024)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=256,
        n_embd=128,
        n_layer=2,
        n_head=4,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    rankings = rankings_from_comparisons(train, tokenizer)
    pairs_per_step = round(args.rankings_per_step * np.mean([len(r.pairs) for r in rankings]))
    sides = [("kwise", rankings, args.rankings_per_step), ("pairwise", as_pairs(rankings), pairs_per_step)]
    runs: dict[str, list[dict]] = {name: [] for name, _, _ in sides}
    for repeat in range(args.repeats):  # alternate the sides, so that load falls on both
        for name, data, per_step in sides:
            print(f"repeat {repeat + 1}/{args.repeats}: {name}", file=sys.stderr, flush=True)
            torch.manual_seed(args.seed)
            model = GPT2ForSequenceClassification(config)
            stats = train_on_rankings(
                model,
                tokenizer,
                data,
                epochs=args.epochs,
                batch_size=per_step,
                learning_rate=1e-3,
                max_length=128,
                seed=args.seed,
            )
            runs[name].append({**stats, "accuracy": held_out_accuracy(model, tokenizer, test)})
    rate = {name: [run["pairs_per_s"] for run in side_runs] for name, side_runs in runs.items()}
    accuracy_of = {name: statistics.median(run["accuracy"] for run in side_runs) for name, side_runs in runs.items()}
    print(
        json.dumps(
            {
                "bench": "reward",
                "machine": machine(),
                "k": args.k,
                "train_pairs": int((~train["tie"]).sum()),
                "test_pairs": int((~test["tie"]).sum()),
                "epochs": args.epochs,
                "repeats": args.repeats,
                "pairs_seen": runs["kwise"][0]["pairs_seen"],
                "kwise_pairs_per_s": spread(rate["kwise"]),
                "pairwise_pairs_per_s": spread(rate["pairwise"]),
                "ratio": round(statistics.median(rate["kwise"]) / statistics.median(rate["pairwise"]), 2),
                "paired_ratio": spread([k / p for k, p in zip(rate["kwise"], rate["pairwise"])], digits=2),
                "kwise_accuracy": round(accuracy_of["kwise"], 4),
                "pairwise_accuracy": round(accuracy_of["pairwise"], 4),
            }
        )
    )


if __name__ == "__main__":
    main()

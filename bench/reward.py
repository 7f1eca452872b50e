"""Reward-model training: K-wise batching against plain pairwise, on the same data, in one run.

    python bench/reward.py [--k 4] [--rankings-per-prompt 4] [--epochs 2]

Data: the demo domain's prompts, K sampled responses each (several rankings per prompt), ranked
by the rule judge of params.yaml; ties dropped; 20% of prompts held out (split by prompt). Both
sides train the same randomly initialised tiny GPT-2 reward model (the demo tokenizer), with the
same loop, optimizer, schedule, epochs and pairs per optimizer step; only the batching differs:
K-wise scores each ranking's K responses once for all its pairs, pairwise scores 2 texts per
pair. Prints one JSON line; target ratio >= 1.5 with held-out accuracy no worse.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from transformers import GPT2Config, GPT2ForSequenceClassification  # noqa: E402

from rlhf.config import load_params  # noqa: E402
from rlhf.demo import domain  # noqa: E402
from rlhf.demo.tokenizer import train_tokenizer  # noqa: E402
from rlhf.judges import RuleJudge  # noqa: E402
from rlhf.reward import preference_pairs  # noqa: E402
from rlhf.scoring import score_texts  # noqa: E402
from rlhf.reward_kwise import as_pairs, rankings_from_comparisons, train_on_rankings  # noqa: E402
from rlhf.reward_report import accuracy  # noqa: E402
from rlhf.text import content_id  # noqa: E402


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
                    rows.append({
                        "ranking_id": ranking_id, "prompt": prompt, "split": split, "judge": "rules",
                        "chosen_id": ids[better], "rejected_id": ids[worse], "chosen": responses[better],
                        "rejected": responses[worse], "margin": scores[better] - scores[worse],
                        "tie": scores[i] == scores[j],
                    })  # fmt: skip
    return pd.DataFrame(rows)


def held_out_accuracy(model, tokenizer, test: pd.DataFrame) -> float:
    pairs = preference_pairs(test, tokenizer)
    chosen = score_texts(model, tokenizer, list(pairs["chosen"])).numpy()
    rejected = score_texts(model, tokenizer, list(pairs["rejected"])).numpy()
    return accuracy(chosen - rejected)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--rankings-per-prompt", type=int, default=4)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--rankings-per-step", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    comparisons = comparisons_frame(args.k, args.rankings_per_prompt, args.seed)
    train, test = comparisons[comparisons["split"] == "train"], comparisons[comparisons["split"] == "test"]
    tokenizer = train_tokenizer(domain.corpus(seed=args.seed, size=2000), vocab_size=1024)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=256, n_embd=128, n_layer=2, n_head=4, num_labels=1,
                        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)  # fmt: skip
    rankings = rankings_from_comparisons(train, tokenizer)
    pairs_per_step = round(args.rankings_per_step * np.mean([len(r.pairs) for r in rankings]))
    results = {}
    for name, data, per_step in [
        ("kwise", rankings, args.rankings_per_step),
        ("pairwise", as_pairs(rankings), pairs_per_step),
    ]:
        torch.manual_seed(args.seed)
        model = GPT2ForSequenceClassification(config)
        stats = train_on_rankings(
            model, tokenizer, data, epochs=args.epochs, batch_size=per_step, learning_rate=1e-3, max_length=128,
            seed=args.seed,
        )  # fmt: skip
        results[name] = {**stats, "accuracy": held_out_accuracy(model, tokenizer, test)}
    kwise, pairwise = results["kwise"], results["pairwise"]
    print(json.dumps({
        "bench": "reward", "k": args.k, "train_pairs": int((~train["tie"]).sum()),
        "test_pairs": int((~test["tie"]).sum()), "epochs": args.epochs,
        "kwise_pairs_per_s": kwise["pairs_per_s"], "pairwise_pairs_per_s": pairwise["pairs_per_s"],
        "ratio": round(kwise["pairs_per_s"] / pairwise["pairs_per_s"], 2),
        "kwise_accuracy": round(kwise["accuracy"], 4), "pairwise_accuracy": round(pairwise["accuracy"], 4),
    }))  # fmt: skip


if __name__ == "__main__":
    main()

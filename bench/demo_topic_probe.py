"""Does the demo's reward model check the topic? One JSON line, seen and unseen topics apart.

For every held-out response that names its prompt's topic, the probe scores it against the same
response with that topic word swapped for another topic (a counterfactual pair: one principle
changed, nothing else), and reports the share of pairs where the reward model prefers the
original and the mean score gap. On seen topics a reward model can have learnt the topics one by
one; on the unseen ones (rlhf/demo/domain.py: UNSEEN_TOPICS) only a model that compares the
answer with the prompt prefers the original. Read beside evaluate's unseen-topic on-topic share:
it tells a reward model that misses the topic from a policy that does not learn to name it.

    python bench/demo_topic_probe.py --repo .      # a pipeline repository after `dvc repro`
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pandas as pd
import torch

from rlhf import chat
from rlhf.demo import domain
from rlhf.judges.constitution import words
from rlhf.pretrained import load_tokenizer
from rlhf.reward_models.ensemble import load_reward_model
from rlhf.scoring import score_exchanges


def swap_topic(response: str, topic: str, other: str) -> str:
    return " ".join(other if word == topic else word for word in response.split(" "))


def probe(model, tokenizer, rows: pd.DataFrame, rng: random.Random) -> dict:
    """Share of on-topic responses the model scores above their topic-swapped copies, and the mean gap."""
    rows = rows[[row.topic in words(row.response) for row in rows.itertuples()]]
    if rows.empty:
        return {"responses": 0}
    conversations = [chat.as_conversation(prompt) for prompt in rows["prompt"]]
    swapped = [
        swap_topic(row.response, row.topic, rng.choice([t for t in domain.TOPICS if t != row.topic]))
        for row in rows.itertuples()
    ]
    gap = score_exchanges(model, tokenizer, conversations, list(rows["response"])) - score_exchanges(
        model, tokenizer, conversations, swapped
    )
    return {
        "responses": len(rows),
        "prefers_on_topic": round(float((gap > 0).float().mean()), 3),
        "mean_gap": round(float(gap.mean()), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=Path("."))
    parser.add_argument("--seed", type=int, default=0, help="draws the replacement topics")
    args = parser.parse_args()
    model_dir = args.repo / "models" / "reward"
    tokenizer = load_tokenizer(model_dir)  # an ensemble's first member (and its tokenizer) is the directory itself
    model = load_reward_model(model_dir, torch.device("cpu"), tokenizer.pad_token_id)
    comparisons = args.repo / "data" / "comparisons"
    prompts = pd.read_parquet(comparisons / "prompts.parquet")
    rows = pd.read_parquet(comparisons / "responses.parquet").merge(prompts, on="prompt_id")
    unseen = rows["topic"].isin(domain.UNSEEN_TOPICS)
    rng = random.Random(args.seed)
    line = {
        "bench": "demo_topic_probe",
        "repo": str(args.repo.resolve()),
        "seen_topics_held_out": probe(model, tokenizer, rows[(rows["split"] == "test") & ~unseen], rng),
        "unseen_topics": probe(model, tokenizer, rows[unseen], rng),
    }
    print(json.dumps(line))


if __name__ == "__main__":
    main()

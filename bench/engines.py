"""A training stage on one tiny run under each engine: single, ddp, deepspeed_zero2, deepspeed_zero3, fsdp.

    python bench/engines.py [--stage train_policy|train_reward] [--repeats 3] [--iterations 4]
                            [--processes 2] [--engines single,ddp,...]

Writes one fixture (the demo's tokenizer, a random 2-layer GPT-2 policy and reward model, the demo's
prompts; for train_reward, a comparisons snapshot of 128 prompts x 4 responses ranked by a rule),
then runs the stage as a process per engine, alternating (single, ddp, zero2, zero3, fsdp, single,
...) so that load on the machine falls on every engine. Prints one JSON line per engine: for
train_policy, episodes/s of the training loop (iterations x batch_size / train_wall_s); for
train_reward, pairs/s (train pairs x epochs / train_wall_s); so the launch and the imports are not
counted; and each process's peak resident memory (metrics' peak_rss_mb_per_process), median with
min and max over the repeats, and the machine.

On CPU the processes share the machine's cores: the figures compare what each engine's
communication and sharding cost on one tiny model, not how it scales over GPUs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

from bench.algorithms import spread
from rlhf.machine import machine

ENGINES = ["single", "ddp", "deepspeed_zero2", "deepspeed_zero3", "fsdp"]


def write_fixture(directory: Path) -> None:
    """Tokenizer, tiny policy and reward model, prompts: as bootstrap_policy and collect_prompts leave them."""
    import pandas as pd
    import torch
    from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel

    from rlhf.demo import domain
    from rlhf.demo.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(domain.corpus(seed=0, size=300), vocab_size=400)
    config = dict(
        vocab_size=len(tokenizer),
        n_positions=128,
        n_embd=64,
        n_layer=2,
        n_head=2,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(**config)).save_pretrained(directory / "policy")
    GPT2ForSequenceClassification(GPT2Config(**config, num_labels=1)).save_pretrained(directory / "reward")
    for name in ("policy", "reward"):
        tokenizer.save_pretrained(directory / name)
    prompts = domain.all_prompts()[:48]
    pd.DataFrame(
        {"prompt": [p for p, _ in prompts], "topic": [t for _, t in prompts], "split": ["train"] * 40 + ["test"] * 8}
    ).to_parquet(directory / "prompts.parquet")


def write_comparisons(directory: Path) -> None:
    """A comparisons snapshot: 128 prompts x 4 responses, ranked by how often they say thanks; every
    fourth prompt held out."""
    import pandas as pd

    from rlhf.ranking import RANKING_COLUMNS
    from rlhf.store.feedback_store import FeedbackStore

    prompts, responses, rankings = [], [], []
    for p in range(128):
        prompts.append(
            (f"p{p}", f"tell me about thing {p} . answer :", None, "test" if p % 4 == 0 else "train", "bench")
        )
        for j in range(4):
            text = ("thanks , " * (3 - j)) + f"thing {p} is fine"
            responses.append((f"p{p}r{j}", f"p{p}", j, text, "ckpt", "{}"))
            rankings.append((f"k{p}", f"p{p}r{j}", f"p{p}", j + 1, float(-j), "{}", "rules", "1"))
    store = FeedbackStore(directory / "feedback.duckdb")
    store.ingest(
        {"run_id": "bench", "stage": "bench"},
        pd.DataFrame(prompts, columns=["prompt_id", "prompt", "topic", "split", "source"]),
        pd.DataFrame(
            responses,
            columns=["response_id", "prompt_id", "sample_index", "response", "policy_checkpoint", "sampling"],
        ),
        pd.DataFrame(rankings, columns=RANKING_COLUMNS),
    )
    store.snapshot_comparisons(directory / "comparisons")


def policy_command(directory: Path, run: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "rlhf.stages.train_policy",
        "--params",
        str(run / "params.yaml"),
        "--prompts",
        str(directory / "prompts.parquet"),
        "--policy_dir",
        str(directory / "policy"),
        "--reference_dir",
        str(directory / "policy"),
        "--reward_dir",
        str(directory / "reward"),
        "--comparisons",
        str(run / "unused"),
        "--cost_dir",
        str(run / "unused"),
        "--model_dir",
        str(run / "model"),
        "--metrics",
        str(run / "policy.json"),
        "--curve",
        str(run / "policy.csv"),
        "--curve_png",
        str(run / "policy.png"),
        "--gold_png",
        str(run / "gold.png"),
        "--checkpoint_dir",
        str(run / "ckpt"),
        "--live_dir",
        str(run / "dvclive"),
    ]


def reward_command(directory: Path, run: Path) -> list[str]:
    paths = {
        "params": run / "params.yaml",
        "comparisons": directory / "comparisons",
        "init_dir": directory / "policy",
        "model_dir": run / "model",
        "metrics": run / "metrics.json",
        "distribution_png": run / "reward.png",
        "live_dir": run / "dvclive",
        "checkpoint_dir": run / "ckpt",
    }
    return [sys.executable, "-m", "rlhf.stages.train_reward", *[f"--{k}={v}" for k, v in paths.items()]]


def run_once(directory: Path, stage: str, engine: str, settings: dict, processes: int) -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    many = engine != "single"
    params[stage].update(settings, launcher=engine, num_processes=processes if many else 1)
    run = directory / engine
    run.mkdir(exist_ok=True)
    (run / "params.yaml").write_text(yaml.safe_dump(params))
    command = (policy_command if stage == "train_policy" else reward_command)(directory, run)
    environment = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=900)
    if done.returncode:
        causes = [line for line in done.stderr.splitlines() if "Error" in line or line.startswith("[rank")]
        raise RuntimeError(f"{engine}: the stage failed:\n" + "\n".join(causes[-40:]))
    if stage == "train_policy":
        metrics = json.loads((run / "policy.json").read_text())
        done = settings["iterations"] * settings["batch_size"]
    else:
        metrics = json.loads((run / "metrics.json").read_text())
        done = metrics["train_pairs"] * settings["epochs"]
    return {"per_second": done / metrics["train_wall_s"], "peaks": metrics["peak_rss_mb_per_process"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", choices=["train_policy", "train_reward"], default="train_policy")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=4, help="train_policy's iterations")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--engines", default=",".join(ENGINES))
    args = parser.parse_args()
    engines = args.engines.split(",")
    if args.stage == "train_policy":
        bench, unit = "engines", "episodes_per_second"
        settings = {
            "iterations": args.iterations,
            "batch_size": 16,
            "minibatch_size": 8,
            "ppo_epochs": 2,
            "max_new_tokens": 16,
            "checkpoint_every": 1000,
            "eval_every": 0,
            "log_samples_every": 0,
        }
    else:
        bench, unit = "reward_engines", "pairs_per_second"
        settings = {"epochs": 1, "batch_size": 16, "max_length": 48, "checkpoint_every": 0}
    results: dict[str, list[dict]] = {engine: [] for engine in engines}
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        # stdout carries only the JSON lines: what the fixture's imports log (DeepSpeed's logger
        # binds stdout as it loads) goes to stderr
        with contextlib.redirect_stdout(sys.stderr):
            write_fixture(directory)
            if args.stage == "train_reward":
                write_comparisons(directory)
        for _ in range(args.repeats):
            for engine in engines:  # alternating: each repeat runs every engine once
                results[engine].append(run_once(directory, args.stage, engine, settings, args.processes))
    about = {"machine": machine(), "load_average": os.getloadavg(), "settings": settings}
    baseline = results.get("single")
    for engine, runs in results.items():
        peaks = [run["peaks"] for run in runs]
        rate = spread([run["per_second"] for run in runs])
        line = {
            "bench": bench,
            "engine": engine,
            "processes": len(peaks[0]),
            "repeats": len(runs),
            unit: rate,
            # against one process in the same invocation (median over median)
            "ratio_to_single": round(rate["median"] / spread([r["per_second"] for r in baseline])["median"], 3)
            if baseline
            else None,
            "peak_rss_mb_per_process": [spread([p[rank] for p in peaks]) for rank in range(len(peaks[0]))],
            **about,
        }
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()

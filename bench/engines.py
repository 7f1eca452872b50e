"""The train_policy stage on one tiny run under each engine: single, ddp, deepspeed_zero2, deepspeed_zero3, fsdp.

    python bench/engines.py [--repeats 3] [--iterations 4] [--processes 2] [--engines single,ddp,...]

Writes one fixture (the demo's tokenizer, a random 2-layer GPT-2 policy and reward model, the demo's
prompts), then runs the stage as a process per engine, alternating (single, ddp, zero2, zero3,
fsdp, single, ...) so that load on the machine falls on every engine. Prints one JSON line per
engine: episodes/s of the training loop (iterations x batch_size / train_wall_s, so the launch and
the imports are not counted) and each process's peak resident memory (metrics'
peak_rss_mb_per_process), median with min and max over the repeats, and the machine.

On CPU the processes share the machine's cores: the figures compare what each engine's
communication and sharding cost on one tiny model, not how it scales over GPUs.
"""

from __future__ import annotations

import argparse
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


def run_once(directory: Path, engine: str, settings: dict, processes: int) -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    many = engine != "single"
    params["train_policy"].update(settings, launcher=engine, num_processes=processes if many else 1)
    run = directory / engine
    run.mkdir(exist_ok=True)
    (run / "params.yaml").write_text(yaml.safe_dump(params))
    command = [
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
    environment = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=900)
    if done.returncode:
        causes = [line for line in done.stderr.splitlines() if "Error" in line or line.startswith("[rank")]
        raise RuntimeError(f"{engine}: the stage failed:\n" + "\n".join(causes[-40:]))
    metrics = json.loads((run / "policy.json").read_text())
    episodes = settings["iterations"] * settings["batch_size"]
    return {"episodes_per_second": episodes / metrics["train_wall_s"], "peaks": metrics["peak_rss_mb_per_process"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--engines", default=",".join(ENGINES))
    args = parser.parse_args()
    engines = args.engines.split(",")
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
    results: dict[str, list[dict]] = {engine: [] for engine in engines}
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        write_fixture(directory)
        for _ in range(args.repeats):
            for engine in engines:  # alternating: each repeat runs every engine once
                results[engine].append(run_once(directory, engine, settings, args.processes))
    about = {"machine": machine(), "load_average": os.getloadavg(), "settings": settings}
    baseline = results.get("single")
    for engine, runs in results.items():
        peaks = [run["peaks"] for run in runs]
        rate = spread([run["episodes_per_second"] for run in runs])
        line = {
            "bench": "engines",
            "engine": engine,
            "processes": len(peaks[0]),
            "repeats": len(runs),
            "episodes_per_second": rate,
            # against one process in the same invocation (median over median)
            "ratio_to_single": round(rate["median"] / spread([r["episodes_per_second"] for r in baseline])["median"], 3)
            if baseline
            else None,
            "peak_rss_mb_per_process": [spread([p[rank] for p in peaks]) for rank in range(len(peaks[0]))],
            **about,
        }
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()

"""Our PPO against TRL 0.29.1's PPOTrainer: same model, prompts, lengths, batch sizes, epochs, seed.

    python bench/ppo_vs_trl.py [--device cpu|cuda] [--layers 2 --width 128] [--iterations 6]
        [--compile-generation] [--warmup-iterations N]

Writes one fixture (tokenizer, random-init GPT-2 policy / value / reward weights as safetensors,
prompts, run settings), then runs each side in its own process so peak memory is per side:
ours in this interpreter, TRL in `bench/.venv-trl` (built on first use: TRL 0.29.1 needs
transformers < 5, so it is never a dependency of the project) or in the interpreter that
`--trl-python` names (on a machine with no package index). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
TRL_VENV = BENCH / ".venv-trl"
TRL_REQUIREMENTS = ["torch==2.13.0", "trl==0.29.1", "transformers<5", "accelerate", "datasets"]


def ensure_trl_venv(given: Path | None) -> Path:
    if given is not None:  # an interpreter that already imports TRL 0.29.1 (an offline GPU machine)
        return given
    python = TRL_VENV / "bin" / "python"
    if not python.exists():
        print(f"building {TRL_VENV} (TRL 0.29.1, transformers<5) ...", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(TRL_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *TRL_REQUIREMENTS], check=True)
    return python


def write_fixture(directory: Path, args: argparse.Namespace) -> None:
    import torch
    from safetensors.torch import save_model
    from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel

    from rlhf.demo import domain
    from rlhf.demo.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(domain.corpus(seed=args.seed, size=2000), vocab_size=1024)
    tokenizer.save_pretrained(directory / "tokenizer")
    model_config = {
        "vocab_size": len(tokenizer),
        "n_positions": 256,
        "n_embd": args.width,
        "n_layer": args.layers,
        "n_head": args.heads,
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    torch.manual_seed(args.seed)
    policy = GPT2LMHeadModel(GPT2Config(**model_config))
    save_model(policy, str(directory / "policy.safetensors"))
    for name in ("value", "reward"):
        head_model = GPT2ForSequenceClassification(GPT2Config(**model_config, num_labels=1))
        save_model(head_model, str(directory / f"{name}.safetensors"))
    spec = {
        "device": args.device,
        "model_config": model_config,
        "model_params": policy.num_parameters(),
        "eos_token": tokenizer.eos_token,
        "pad_token": tokenizer.pad_token,
        "prompts": [prompt for prompt, _ in domain.all_prompts()],
        "run": {
            "iterations": args.iterations,
            "batch_size": args.batch_size,
            "micro_batch_size": args.micro_batch_size,
            "ppo_epochs": args.ppo_epochs,
            "response_length": args.response_length,
            "kl_coef": 0.05,
            "learning_rate": 3e-6,
            "seed": args.seed,
            "compile": args.compile,
            "compile_generation": args.compile_generation,
        },
    }
    (directory / "spec.json").write_text(json.dumps(spec))


def run_ours(fixture: Path) -> dict:
    """Our side, in its own process (see main)."""
    import torch
    from safetensors.torch import load_model
    from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel

    from rlhf.config import TrainPolicyParams
    from rlhf.models import load_tokenizer
    from rlhf.ppo.models import PPOModels
    from rlhf.ppo.rollout import RewardScorer
    from rlhf.ppo.trainer import train_ppo

    spec = json.loads((fixture / "spec.json").read_text())
    device, run = torch.device(spec["device"]), spec["run"]
    tokenizer = load_tokenizer(fixture / "tokenizer")

    def load(cls, name, **extra):
        model = cls(GPT2Config(**spec["model_config"], **extra))
        load_model(model, str(fixture / f"{name}.safetensors"))
        return model.to(device)

    params = TrainPolicyParams(
        iterations=run["iterations"],
        batch_size=run["batch_size"],
        minibatch_size=run["batch_size"],  # TRL 0.29 steps once per rollout batch (see trl_ppo_side.py)
        micro_batch_size=run["micro_batch_size"],
        ppo_epochs=run["ppo_epochs"],
        max_new_tokens=run["response_length"],
        kl_coef=run["kl_coef"],
        learning_rate=run["learning_rate"],
        value_learning_rate=run["learning_rate"],
        mixed_precision="bf16" if device.type == "cuda" else "no",
        score_normalization="none",  # TRL 0.29 uses raw scores (whiten_rewards is off by default)
        compile=run["compile"],
        compile_generation=run["compile_generation"],
    )
    models = PPOModels.build(
        load(GPT2LMHeadModel, "policy"),
        load(GPT2ForSequenceClassification, "value", num_labels=1),
        params,
        reference=load(GPT2LMHeadModel, "policy"),
    )
    scorer = RewardScorer(load(GPT2ForSequenceClassification, "reward", num_labels=1), tokenizer)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    iteration_ends = []

    def clock(row: dict) -> None:  # train_ppo logs once per iteration, after its update
        if device.type == "cuda":
            torch.cuda.synchronize()
        iteration_ends.append(time.perf_counter() - started)

    started = time.perf_counter()
    result = train_ppo(models, scorer, tokenizer, spec["prompts"], params, seed=run["seed"], log=clock)
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    peak_mb = (
        torch.cuda.max_memory_allocated() / 2**20
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    episodes = run["batch_size"] * len(result.history)
    trained = sum(p.numel() for p in models.trained.parameters() if p.requires_grad)
    prompt_tokens = tokenizer(spec["prompts"], padding=True, return_tensors="pt")["input_ids"].shape[1]
    weight_bytes = (2 if device.type == "cuda" else 4) * models.policy.num_parameters()  # bf16 on GPU
    return {
        "episodes": episodes,
        "seconds": elapsed,
        "episodes_per_s": episodes / elapsed,
        "peak_mem_mb": peak_mb,
        "iteration_ends_s": iteration_ends,
        # per iteration: the update's FLOP (6 per trained parameter per token, per epoch) and the
        # bytes the decode steps streamed (each step reads the policy's weights once), with their times
        "update_flop": [
            6 * trained * run["batch_size"] * (prompt_tokens + row["response_length"]) * run["ppo_epochs"]
            for row in result.history
        ],
        "update_seconds": [row["update_seconds"] for row in result.history],
        "decode_bytes": [weight_bytes * row["generated_tokens"] / run["batch_size"] for row in result.history],
        "generation_seconds": [row["generation_seconds"] for row in result.history],
    }


# Dense bf16 peak FLOP/s and HBM bandwidth (bytes/s) of the cards the GPU figures are quoted for.
PEAKS = {"H100": (989e12, 3.35e12), "H200": (989e12, 4.8e12), "A100": (312e12, 2.0e12)}


def utilisation(ours: dict, device: str, warmup: int) -> dict:
    """Update-phase FLOP/s and MFU, generation-phase memory-bandwidth utilisation, over the timed iterations."""
    update_flops_per_s = sum(ours["update_flop"][warmup:]) / sum(ours["update_seconds"][warmup:])
    generation_bytes_per_s = sum(ours["decode_bytes"][warmup:]) / sum(ours["generation_seconds"][warmup:])
    peak = next((value for name, value in PEAKS.items() if name in device), None)
    return {
        "ours_update_gflops_per_s": round(update_flops_per_s / 1e9, 1),
        "update_mfu": round(update_flops_per_s / peak[0], 4) if peak else None,
        "generation_bandwidth_util": round(generation_bytes_per_s / peak[1], 4) if peak else None,
    }


def steady_rate(run: dict, batch_size: int, warmup: int) -> float:
    """Episodes per second after the first `warmup` iterations (compiles, allocator and cache warm-up);
    the whole run's rate when `warmup` is 0."""
    if not warmup:
        return run["episodes_per_s"]
    ends = run["iteration_ends_s"]
    return (len(ends) - warmup) * batch_size / (ends[-1] - ends[warmup - 1])


def run_side(command: list[str]) -> dict:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "TRL_EXPERIMENTAL_SILENCE": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        sys.exit(f"{' '.join(command[:2])} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--micro-batch-size", type=int, default=32, help="gradient accumulation unit")
    parser.add_argument("--ppo-epochs", type=int, default=4)
    parser.add_argument("--response-length", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compile", action="store_true", help="torch.compile our update phase")
    parser.add_argument("--compile-generation", action="store_true", help="our static KV cache + compiled decode step")
    parser.add_argument(
        "--warmup-iterations", type=int, default=0,
        help="time both sides from the end of this iteration on (0: the whole run, compiles included)",
    )  # fmt: skip
    parser.add_argument("--repeats", type=int, default=3, help="runs of each side, alternating; best kept")
    parser.add_argument(
        "--trl-python", type=Path, help="a Python that imports TRL 0.29.1 (default: build bench/.venv-trl)"
    )
    parser.add_argument("--side", choices=["ours"], help=argparse.SUPPRESS)
    parser.add_argument("--fixture", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not 0 <= args.warmup_iterations < args.iterations:
        parser.error("--warmup-iterations must be at least 0 and below --iterations")
    if args.side == "ours":
        print(json.dumps(run_ours(args.fixture)))
        return
    trl_python = ensure_trl_venv(args.trl_python)
    with tempfile.TemporaryDirectory() as tmp:
        fixture = Path(tmp)
        write_fixture(fixture, args)
        spec = json.loads((fixture / "spec.json").read_text())
        trl_runs, our_runs = [], []
        for _ in range(args.repeats):  # alternate sides; each keeps its fastest run (as timeit does)
            trl_runs.append(run_side([str(trl_python), str(BENCH / "trl_ppo_side.py"), str(fixture)]))
            our_runs.append(run_side([sys.executable, __file__, "--side", "ours", "--fixture", str(fixture)]))
        for run in trl_runs + our_runs:
            run["episodes_per_s"] = steady_rate(run, args.batch_size, args.warmup_iterations)
        trl = max(trl_runs, key=lambda run: run["episodes_per_s"])
        ours = max(our_runs, key=lambda run: run["episodes_per_s"])
    print(
        json.dumps(
            {
                "bench": "ppo_vs_trl",
                "device": device_name(args.device),
                "model_params": spec["model_params"],
                "episodes": ours["episodes"],
                "response_length": args.response_length,
                "repeats": args.repeats,
                "warmup_iterations": args.warmup_iterations,
                "compile_generation": args.compile_generation,
                "ours_first_iteration_s": round(ours["iteration_ends_s"][0], 2),
                "trl_first_iteration_s": round(trl["iteration_ends_s"][0], 2),
                "ours_episodes_per_s": round(ours["episodes_per_s"], 2),
                "trl_episodes_per_s": round(trl["episodes_per_s"], 2),
                "ratio": round(ours["episodes_per_s"] / trl["episodes_per_s"], 2),
                "ours_peak_mem_mb": round(ours["peak_mem_mb"], 1),
                "trl_peak_mem_mb": round(trl["peak_mem_mb"], 1),
                **utilisation(ours, device_name(args.device), args.warmup_iterations),
            }
        )
    )


def device_name(device: str) -> str:
    import torch

    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"cpu ({os.cpu_count()} cores)"


if __name__ == "__main__":
    sys.path.insert(0, str(BENCH.parent))
    main()

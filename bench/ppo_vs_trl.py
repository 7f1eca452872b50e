"""Our PPO against TRL 0.29.1's PPOTrainer, doing the same work, in alternating repeats.

    python bench/ppo_vs_trl.py [--device cpu|cuda] [--layers 2 --width 128] [--iterations 6]
        [--repeats 3] [--warmup-iterations N] [--precision auto|bf16|fp32]
        [--stack-level] [--compile] [--compile-generation]

Writes one fixture (tokenizer, random-init GPT-2 policy / value / reward weights as safetensors,
prompts, run settings), then runs each side in its own process, alternating (ours, TRL, ours,
TRL, ...) so that load on the machine falls on both. Ours runs in this interpreter; TRL in
`bench/.venv-trl` (built on first use: TRL 0.29.1 installed without dependencies over this venv,
so both sides run the same transformers 5, torch and accelerate; TRL 0.29.1's PPOTrainer runs
under transformers 5) or in the interpreter `--trl-python` names (a machine with no package index).

Identical on both sides, so the ratio compares the PPO implementations:
  - model code: the same GPT-2 weights with the fixture's `activation_function`
    `gelu_pytorch_tanh`, PyTorch's fused tanh-GELU (our pipeline swaps GPT-2's Python `gelu_new`
    for that kernel; here both sides get it from the config, and our swap finds nothing to do);
  - precision: fp32 on CPU; on CUDA bf16 autocast over the rollout and the update on both (TRL's
    rollout is put under autocast: by itself it runs it in fp32), or fp32 on both (`--precision fp32`);
  - work: the same prompts (rendered as our side renders them, drawn uniformly with replacement),
    batch, micro-batch, PPO epochs, response length, sampling temperature; one optimizer step per
    rollout batch and epoch on both, counted on each side and checked (TRL's dataset is sized so
    that its dataloader never reaches its end: where it did, mid-run, TRL stepped on every
    micro-batch of that iteration); the same episodes; each side's mean response length checked
    against ours (within LENGTH_TOLERANCE);
  - no torch.compile on either side.

Prints one JSON line: per side the median, min and max over the repeats of episodes/s and the mean
response length; `ratio` is the ratio of the medians and `paired_ratio` the median (min, max) of
the ratios of each adjacent (ours, TRL) pair. Figures that are not the same work go only under
`stack_level`, labelled: `--compile` / `--compile-generation` add our compiled side, `--stack-level`
adds TRL as it comes (GPT-2's `gelu_new`, TRL's own precision: bf16 only in the update on CUDA).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))

from rlhf.machine import machine  # light: torch is imported only when it is called

TRL_VENV = BENCH / ".venv-trl"
TRL_PIN = "trl==0.29.1"
MAIN_VENV_PTH = "main-venv.pth"
FUSED_GELU, STOCK_GELU = "gelu_pytorch_tanh", "gelu_new"
# Both sides sample from the same starting policy (3e-6 for 24 steps barely moves it), so their mean
# response lengths differ by sampling noise only. Lengths lie in 1..response_length, so their std is
# at most half the cap: over the default 3 x 384 responses a side, the mean's standard error is at
# most 0.35 tokens of 24 (1.5%). A gap over 10% is different work (one side not stopping at EOS, or
# counting tokens another way), not noise.
LENGTH_TOLERANCE = 0.10


def ensure_trl_venv(given: Path | None) -> Path:
    """A Python that imports TRL 0.29.1 and, for everything else, this venv's packages."""
    if given is not None:  # an interpreter that already imports TRL 0.29.1 (an offline GPU machine)
        return given
    python = TRL_VENV / "bin" / "python"
    main_sites = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    link = "".join(f"import site; site.addsitedir({site!r})\n" for site in main_sites)
    if python.exists():
        pth = own_site_packages(python) / MAIN_VENV_PTH
        if pth.exists() and pth.read_text() == link:
            return python
        print(f"rebuilding {TRL_VENV}: it is not TRL 0.29.1 over this venv", file=sys.stderr, flush=True)
        shutil.rmtree(TRL_VENV)
    print(f"building {TRL_VENV} ({TRL_PIN} over this venv's packages) ...", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(TRL_VENV)], check=True)
    site_packages = own_site_packages(python)
    install = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site_packages), TRL_PIN]
    subprocess.run(install, check=True)
    (site_packages / MAIN_VENV_PTH).write_text(link)  # after its own site-packages: its TRL wins
    return python


def own_site_packages(python: Path) -> Path:
    where = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    return Path(subprocess.run([str(python), "-c", where], capture_output=True, text=True, check=True).stdout.strip())


def write_fixture(directory: Path, args: argparse.Namespace) -> None:
    import torch
    from safetensors.torch import save_model
    from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel

    from rlhf import chat
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
        "activation_function": FUSED_GELU,
    }
    torch.manual_seed(args.seed)
    policy = GPT2LMHeadModel(GPT2Config(**model_config))
    save_model(policy, str(directory / "policy.safetensors"))
    for name in ("value", "reward"):
        head_model = GPT2ForSequenceClassification(GPT2Config(**model_config, num_labels=1))
        save_model(head_model, str(directory / f"{name}.safetensors"))
    prompts = [prompt for prompt, _ in domain.all_prompts()]
    spec = {
        "device": args.device,
        "model_config": model_config,
        "model_params": policy.num_parameters(),
        "eos_token": tokenizer.eos_token,
        "pad_token": tokenizer.pad_token,
        "stock_activation": STOCK_GELU,
        "prompts": prompts,
        # the prompts as our sampler tokenises them (rlhf.policy_optimization.rollout.sample_responses), for TRL's dataset
        "prompt_ids": tokenizer(
            [chat.render_prompt(tokenizer, chat.as_conversation(prompt)) for prompt in prompts],
            add_special_tokens=chat.add_special_tokens_for(tokenizer),
        )["input_ids"],
        "run": {
            "iterations": args.iterations,
            "batch_size": args.batch_size,
            "micro_batch_size": args.micro_batch_size,
            "ppo_epochs": args.ppo_epochs,
            "response_length": args.response_length,
            "kl_coef": 0.05,
            "learning_rate": 3e-6,
            "seed": args.seed,
            "precision": args.precision,
            "compile": args.compile,
            "compile_generation": args.compile_generation,
        },
    }
    (directory / "spec.json").write_text(json.dumps(spec))


def run_ours(fixture: Path, compiled: bool) -> dict:
    """Our side, in its own process (see main); `compiled`: with the run's compile settings."""
    import torch
    import transformers
    from safetensors.torch import load_model
    from torch.optim.optimizer import register_optimizer_step_post_hook
    from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel

    from rlhf.config import TrainPolicyParams
    from rlhf.policy_optimization.models import PolicyModels
    from rlhf.policy_optimization.rollout import RewardScorer
    from rlhf.policy_optimization.trainer import train_policy
    from rlhf.pretrained import load_tokenizer

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
        mixed_precision="bf16" if run["precision"] == "bf16" else "no",
        score_normalization="none",  # TRL 0.29 uses raw scores (whiten_rewards is off by default)
        compile=compiled and run["compile"],
        compile_generation=compiled and run["compile_generation"],
    )
    models = PolicyModels.build(
        load(GPT2LMHeadModel, "policy"),
        load(GPT2ForSequenceClassification, "value", num_labels=1),
        params,
        reference=load(GPT2LMHeadModel, "policy"),
    )
    scorer = RewardScorer(load(GPT2ForSequenceClassification, "reward", num_labels=1), tokenizer)
    optimizer_steps = []  # one entry per real step: accelerate skips the inner step while accumulating
    register_optimizer_step_post_hook(lambda optimizer, args, kwargs: optimizer_steps.append(1))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    iteration_ends = []

    def clock(row: dict) -> None:  # train_policy logs once per iteration, after its update
        if device.type == "cuda":
            torch.cuda.synchronize()
        iteration_ends.append(time.perf_counter() - started)

    started = time.perf_counter()
    result = train_policy(models, scorer, tokenizer, spec["prompts"], params, seed=run["seed"], log=clock)
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
    weight_bytes = (2 if run["precision"] == "bf16" else 4) * models.policy.num_parameters()
    return {
        "episodes": episodes,
        "seconds": elapsed,
        "episodes_per_s": episodes / elapsed,
        "peak_mem_mb": peak_mb,
        "iteration_ends_s": iteration_ends,
        "optimizer_steps": len(optimizer_steps),
        # every iteration samples batch_size responses, so the mean of the iterations' means
        "mean_response_length": statistics.mean(row["response_length"] for row in result.history),
        "activations": sorted({type(m).__name__ for m in models.policy.modules() if "GELU" in type(m).__name__}),
        "transformers": transformers.__version__,
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


def utilisation(runs: list[dict], device: str, warmup: int) -> dict:
    """Update-phase FLOP/s and MFU, generation-phase memory-bandwidth utilisation, over the timed
    iterations of all `runs` (our side's)."""
    flop = sum(sum(run["update_flop"][warmup:]) for run in runs)
    update_seconds = sum(sum(run["update_seconds"][warmup:]) for run in runs)
    decode_bytes = sum(sum(run["decode_bytes"][warmup:]) for run in runs)
    generation_seconds = sum(sum(run["generation_seconds"][warmup:]) for run in runs)
    update_flops_per_s, generation_bytes_per_s = flop / update_seconds, decode_bytes / generation_seconds
    peak = next((value for name, value in PEAKS.items() if name in device), None)
    return {
        "update_gflops_per_s": round(update_flops_per_s / 1e9, 1),
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


def spread(values: list[float], digits: int = 2) -> dict:
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
    }


def side_summary(runs: list[dict]) -> dict:
    return {
        "episodes_per_s": spread([run["episodes_per_s"] for run in runs]),
        "activation": runs[0]["activations"],
        "mean_response_length": round(statistics.mean(run["mean_response_length"] for run in runs), 2),
        "first_iteration_s": round(statistics.median(run["iteration_ends_s"][0] for run in runs), 2),
        "peak_mem_mb": round(max(run["peak_mem_mb"] for run in runs), 1),
    }


def ratios(ours: list[dict], theirs: list[dict]) -> tuple[float, dict]:
    """The ratio of the medians, and the spread of the ratios of each adjacent pair of runs."""
    median = statistics.median(run["episodes_per_s"] for run in ours) / statistics.median(
        run["episodes_per_s"] for run in theirs
    )
    paired = [a["episodes_per_s"] / b["episodes_per_s"] for a, b in zip(ours, theirs)]
    return round(median, 2), spread(paired)


def same_work_problems(runs: dict[str, list[dict]], steps: int, episodes: int) -> list[str]:
    """What differs between the sides' work: optimizer steps, episodes, model code, response length."""
    problems = []
    for name, side_runs in runs.items():
        for run in side_runs:
            if (run["optimizer_steps"], run["episodes"]) != (steps, episodes):
                problems.append(
                    f"{name}: {run['optimizer_steps']} optimizer steps and {run['episodes']} episodes, "
                    f"expected {steps} and {episodes}"
                )
    if runs["ours"][0]["activations"] != runs["trl"][0]["activations"]:
        problems.append(
            f"activations differ: ours {runs['ours'][0]['activations']}, TRL {runs['trl'][0]['activations']}"
        )
    ours_length = statistics.mean(run["mean_response_length"] for run in runs["ours"])
    for name, side_runs in runs.items():
        length = statistics.mean(run["mean_response_length"] for run in side_runs)
        if abs(length - ours_length) > LENGTH_TOLERANCE * ours_length:
            problems.append(f"{name}: mean response length {length:.2f} against ours {ours_length:.2f}")
    return problems


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
    parser.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "bf16", "fp32"],
        help="both sides: auto is bf16 autocast (rollout and update) on CUDA, fp32 on CPU",
    )
    parser.add_argument("--compile", action="store_true", help="stack-level: also run ours with torch.compile'd update")
    parser.add_argument(
        "--compile-generation",
        action="store_true",
        help="stack-level: also run ours with its static KV cache + compiled decode step",
    )
    parser.add_argument(
        "--stack-level",
        action="store_true",
        help="also run TRL as it comes (GPT-2's gelu_new, TRL's own precision): a labelled stack-level ratio",
    )
    parser.add_argument(
        "--warmup-iterations",
        type=int,
        default=0,
        help="time every side from the end of this iteration on (0: the whole run, compiles included)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs of each side, alternating (3 or more to measure)")
    parser.add_argument(
        "--trl-python", type=Path, help="a Python that imports TRL 0.29.1 (default: build bench/.venv-trl)"
    )
    parser.add_argument("--side", choices=["ours", "ours_compiled"], help=argparse.SUPPRESS)
    parser.add_argument("--fixture", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        print(json.dumps(run_ours(args.fixture, compiled=args.side == "ours_compiled")))
        return
    if not 0 <= args.warmup_iterations < args.iterations:
        parser.error("--warmup-iterations must be at least 0 and below --iterations")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.precision == "auto":
        args.precision = "bf16" if args.device == "cuda" else "fp32"
    elif args.precision == "bf16" and args.device == "cpu":
        parser.error("--precision bf16 is for --device cuda")
    if args.repeats < 3:
        print(f"--repeats {args.repeats}: a smoke test, not a measurement (use 3 or more)", file=sys.stderr)
    trl_python = ensure_trl_venv(args.trl_python)
    with tempfile.TemporaryDirectory() as tmp:
        fixture = Path(tmp)
        write_fixture(fixture, args)
        spec = json.loads((fixture / "spec.json").read_text())
        ours_command = [sys.executable, __file__, "--fixture", str(fixture), "--side"]
        trl_command = [str(trl_python), str(BENCH / "trl_ppo_side.py"), str(fixture)]
        sides = {"ours": ours_command + ["ours"], "trl": trl_command}
        if args.compile or args.compile_generation:
            sides["ours_compiled"] = ours_command + ["ours_compiled"]
        if args.stack_level:
            sides["trl_stock"] = trl_command + ["--stock"]
        runs: dict[str, list[dict]] = {name: [] for name in sides}
        for repeat in range(args.repeats):  # alternate the sides, so that load falls on all of them
            for name, command in sides.items():
                print(f"repeat {repeat + 1}/{args.repeats}: {name}", file=sys.stderr, flush=True)
                runs[name].append(run_side(command))
    for run in (run for side_runs in runs.values() for run in side_runs):
        run["episodes_per_s"] = steady_rate(run, args.batch_size, args.warmup_iterations)
    device = device_name(args.device)
    ratio, paired_ratio = ratios(runs["ours"], runs["trl"])
    versions = {name: side_runs[0]["transformers"] for name, side_runs in runs.items()}
    if len(set(versions.values())) > 1:
        print(f"the sides run different transformers versions: {versions}", file=sys.stderr)
    report = {
        "bench": "ppo_vs_trl",
        "device": device,
        "machine": machine(),
        "model_params": spec["model_params"],
        "episodes": runs["ours"][0]["episodes"],
        "optimizer_steps": runs["ours"][0]["optimizer_steps"],
        "max_response_length": args.response_length,
        "repeats": args.repeats,
        "warmup_iterations": args.warmup_iterations,
        "precision": args.precision,
        "transformers": versions["ours"] if len(set(versions.values())) == 1 else versions,
        "ours": side_summary(runs["ours"]),
        "trl": side_summary(runs["trl"]),
        "ratio": ratio,
        "paired_ratio": paired_ratio,
        "length_tolerance": LENGTH_TOLERANCE,
        **utilisation(runs["ours"], device, args.warmup_iterations),
    }
    if len(sides) > 2:
        report["stack_level"] = stack_level(runs, args, device)
    problems = same_work_problems(runs, args.iterations * args.ppo_epochs, args.batch_size * args.iterations)
    if problems:
        print(json.dumps(report), file=sys.stderr)
        sys.exit("the sides did not do the same work:\n  " + "\n  ".join(problems))
    print(json.dumps(report))


def stack_level(runs: dict[str, list[dict]], args: argparse.Namespace, device: str) -> dict:
    """Each stack as it runs a stock GPT-2 at its best: not the same work, so never `ratio`."""
    ours, theirs = runs.get("ours_compiled", runs["ours"]), runs.get("trl_stock", runs["trl"])
    differences = []
    if args.compile:
        differences.append("ours: torch.compile'd update")
    if args.compile_generation:
        differences.append("ours: compiled sampler (static KV cache, compiled decode step)")
    if "trl_stock" in runs:
        differences.append("TRL: GPT-2's Python gelu_new (ours swaps it for the fused kernel)")
        if args.precision == "bf16":
            differences.append("TRL: rollout in fp32, its default (ours under bf16 autocast)")
    ratio, paired_ratio = ratios(ours, theirs)
    level = {"differences": differences, "ratio": ratio, "paired_ratio": paired_ratio}
    for name in ("ours_compiled", "trl_stock"):
        if name in runs:
            level[name] = side_summary(runs[name])
    if "ours_compiled" in runs:
        level["ours_compiled"].update(utilisation(runs["ours_compiled"], device, args.warmup_iterations))
    return level


def device_name(device: str) -> str:
    import torch

    if device == "cuda":
        return torch.cuda.get_device_name()
    return "cpu"  # its model and cores are under "machine"


if __name__ == "__main__":
    main()

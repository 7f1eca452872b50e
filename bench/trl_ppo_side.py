"""The TRL side of bench/ppo_vs_trl.py: TRL 0.29.1's PPOTrainer on a fixture the bench wrote.

    python bench/trl_ppo_side.py FIXTURE [--stock]

Runs in an interpreter that imports TRL 0.29.1 (by default `bench/.venv-trl`: TRL 0.29.1 over the
project's own venv, so both sides run the same transformers, torch and accelerate); imports
nothing from this project. Prints one JSON line: episodes/s, peak memory, the time at which each
iteration ended, optimizer steps taken, mean response length, the activation modules of the
policy and the transformers version.

Same work as our side (bench/ppo_vs_trl.py says what is identical). Here that takes:
  - the fixture's activation (PyTorch's fused tanh-GELU, as our side runs it);
  - on CUDA under bf16, the whole run under bf16 autocast: TRL itself autocasts only the update
    (its prepared model), and runs the rollout's generation, reference, value and reward passes
    in fp32, where ours autocasts the rollout too;
  - a prompt dataset one batch longer than the run: TRL's prepared dataloader flags its last batch
    as the end of the dataloader, and accelerate's `accumulate` then steps the optimizer on every
    micro-batch of that iteration (with 256 prompts, 64 a batch and 6 iterations: 28 steps, not 24).
`--stock` runs TRL as it comes instead, for the bench's stack-level figure: GPT-2's own Python
`gelu_new` and TRL's own precision (bf16 only in the update).
"""

import argparse
import json
import random
import resource
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import transformers
from datasets import Dataset
from safetensors.torch import load_model
from torch.optim.optimizer import register_optimizer_step_post_hook
from transformers import (
    GPT2Config,
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
    PreTrainedTokenizerFast,
    TrainerCallback,
)
from trl.experimental.ppo import PPOConfig, PPOTrainer
from trl.experimental.ppo import ppo_trainer as trl_ppo


class IterationClock(TrainerCallback):
    """Seconds from `start()` to the end of each PPO iteration (TRL steps the callbacks once per rollout batch)."""

    def __init__(self, device: str):
        self.device, self.started, self.ends = device, 0.0, []

    def start(self) -> None:
        self.started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self.device == "cuda":
            torch.cuda.synchronize()
        self.ends.append(time.perf_counter() - self.started)


def count_response_lengths(lengths: list[int], eos_token_id: int) -> None:
    """Wrap TRL's `batch_generation` to record each response's length: its tokens up to and
    including the first EOS, all of them when there is none (as our side's `response_length`)."""
    generate = trl_ppo.batch_generation

    def batch_generation(model, queries, *args, **kwargs):
        query_responses, logits = generate(model, queries, *args, **kwargs)
        responses = query_responses[:, queries.shape[1] :]  # (B, T)
        is_eos = responses == eos_token_id
        first_eos = is_eos.int().argmax(-1)
        lengths.extend(torch.where(is_eos.any(-1), first_eos + 1, responses.shape[1]).tolist())
        return query_responses, logits

    trl_ppo.batch_generation = batch_generation


def main(fixture: Path, stock: bool) -> None:
    spec = json.loads((fixture / "spec.json").read_text())
    device, run = spec["device"], spec["run"]
    bf16 = run["precision"] == "bf16"
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(fixture / "tokenizer" / "tokenizer.json"),
        eos_token=spec["eos_token"],
        pad_token=spec["pad_token"],
        padding_side="left",
        model_input_names=["input_ids", "attention_mask"],
    )
    model_config = {**spec["model_config"]}
    if stock:
        model_config["activation_function"] = spec["stock_activation"]

    def load(cls, name, **extra):
        model = cls(GPT2Config(**model_config, **extra))
        load_model(model, str(fixture / f"{name}.safetensors"))
        return model

    policy, reference = load(GPT2LMHeadModel, "policy"), load(GPT2LMHeadModel, "policy")
    value_model = load(GPT2ForSequenceClassification, "value", num_labels=1)
    reward_model = load(GPT2ForSequenceClassification, "reward", num_labels=1)
    # Prompts drawn uniformly with replacement, as our side draws them, one batch more than the run
    # takes, so the dataloader never reaches its last batch (see the module docstring).
    rows = random.Random(run["seed"]).choices(spec["prompt_ids"], k=run["batch_size"] * (run["iterations"] + 1))
    dataset = Dataset.from_dict({"input_ids": rows})
    optimizer_steps = []  # one entry per real step: accelerate skips the inner step while accumulating
    register_optimizer_step_post_hook(lambda optimizer, args, kwargs: optimizer_steps.append(1))
    lengths: list[int] = []
    count_response_lengths(lengths, tokenizer.eos_token_id)
    with tempfile.TemporaryDirectory() as output_dir:
        args = PPOConfig(
            output_dir=output_dir,
            # TRL 0.29: rollout batch = per_device_train_batch_size * gradient_accumulation_steps,
            # split into num_mini_batches; one optimizer step per minibatch only when that is 1.
            per_device_train_batch_size=run["micro_batch_size"],
            gradient_accumulation_steps=run["batch_size"] // run["micro_batch_size"],
            num_mini_batches=1,
            local_rollout_forward_batch_size=run["batch_size"],
            total_episodes=run["batch_size"] * run["iterations"],
            num_ppo_epochs=run["ppo_epochs"],
            response_length=run["response_length"],
            temperature=1.0,
            kl_coef=run["kl_coef"],
            learning_rate=run["learning_rate"],
            missing_eos_penalty=1.0,
            stop_token="eos",
            seed=run["seed"],
            bf16=bf16,
            gradient_checkpointing=False,
            use_cpu=device == "cpu",
            num_sample_generations=0,
            report_to=[],
            logging_steps=10**6,
            save_strategy="no",
            dataloader_num_workers=0,
        )
        trainer = PPOTrainer(
            args=args,
            processing_class=tokenizer,
            model=policy,
            ref_model=reference,
            reward_model=reward_model,
            train_dataset=dataset,
            value_model=value_model,
        )
        clock = IterationClock(device)
        trainer.add_callback(clock)
        # the rollout under the same bf16 autocast as the update, as on our side
        precision = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 and not stock else nullcontext()
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        clock.start()
        with precision:
            trainer.train()
        if device == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - started
    peak_mb = (
        torch.cuda.max_memory_allocated() / 2**20
        if device == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    episodes = run["batch_size"] * len(clock.ends)
    print(
        json.dumps(
            {
                "episodes": episodes,
                "seconds": elapsed,
                "episodes_per_s": episodes / elapsed,
                "peak_mem_mb": peak_mb,
                "iteration_ends_s": clock.ends,
                "optimizer_steps": len(optimizer_steps),
                "mean_response_length": sum(lengths) / len(lengths),
                "activations": sorted({type(m).__name__ for m in policy.modules() if "GELU" in type(m).__name__}),
                "transformers": transformers.__version__,
            }
        )
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fixture", type=Path)
    parser.add_argument("--stock", action="store_true", help="TRL as it comes: GPT-2's gelu_new, TRL's own precision")
    options = parser.parse_args()
    main(options.fixture, options.stock)

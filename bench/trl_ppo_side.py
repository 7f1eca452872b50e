"""The TRL side of bench/ppo_vs_trl.py: TRL 0.29.1's PPOTrainer on a fixture the bench wrote.

Runs inside its own virtual environment (TRL 0.29.1 needs transformers < 5), so it imports
nothing from this project. Prints one JSON line: episodes/s, peak memory and the time at which each iteration ended.
"""

import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
from datasets import Dataset
from safetensors.torch import load_model
from transformers import (
    GPT2Config,
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
    PreTrainedTokenizerFast,
    TrainerCallback,
)
from trl.experimental.ppo import PPOConfig, PPOTrainer


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


def main(fixture: Path) -> None:
    spec = json.loads((fixture / "spec.json").read_text())
    device = spec["device"]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(fixture / "tokenizer" / "tokenizer.json"),
        eos_token=spec["eos_token"],
        pad_token=spec["pad_token"],
        padding_side="left",
        model_input_names=["input_ids", "attention_mask"],
    )

    def load(cls, name, **extra):
        model = cls(GPT2Config(**spec["model_config"], **extra))
        load_model(model, str(fixture / f"{name}.safetensors"))
        return model

    policy, reference = load(GPT2LMHeadModel, "policy"), load(GPT2LMHeadModel, "policy")
    value_model = load(GPT2ForSequenceClassification, "value", num_labels=1)
    reward_model = load(GPT2ForSequenceClassification, "reward", num_labels=1)
    dataset = Dataset.from_dict({"input_ids": [tokenizer(p)["input_ids"] for p in spec["prompts"]]})
    run = spec["run"]
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
            bf16=device == "cuda",
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
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        clock.start()
        trainer.train()
        if device == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - started
    peak_mb = (
        torch.cuda.max_memory_allocated() / 2**20
        if device == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    episodes = run["batch_size"] * run["iterations"]
    print(
        json.dumps(
            {
                "episodes": episodes,
                "seconds": elapsed,
                "episodes_per_s": episodes / elapsed,
                "peak_mem_mb": peak_mb,
                "iteration_ends_s": clock.ends,
            }
        )
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))

"""The starting policy: the tiny demo GPT-2 trained on demonstrations, or a pretrained model passed through.

Demo mode trains a byte-level BPE tokenizer on the synthetic domain, builds a small GPT-2 from
a config (no hub), and fine-tunes it on mixed-quality demonstrations with TRL's SFTTrainer,
loss on the response tokens only.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from datasets import Dataset
from transformers import GPT2Config, GPT2LMHeadModel
from trl import SFTConfig, SFTTrainer

from rlhf.config import BootstrapPolicyParams
from rlhf.demo import domain
from rlhf.demo.tokenizer import train_tokenizer
from rlhf.models import load_policy, load_tokenizer


def demo_dataset(train_prompts: list[tuple[str, str]], per_prompt: int, seed: int) -> Dataset:
    demos = domain.demonstrations(train_prompts, per_prompt, seed)
    # The completion starts with a space: the policy generates " sure , ..." after "answer :".
    return Dataset.from_list([{"prompt": d.prompt, "completion": " " + d.response} for d in demos])


def train_demo_policy(
    params: BootstrapPolicyParams, train_prompts: list[tuple[str, str]], seed: int, device: torch.device, out_dir: Path
) -> dict:
    tokenizer = train_tokenizer(domain.corpus(seed), params.vocab_size)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=256,
        n_embd=params.n_embd,
        n_layer=params.n_layer,
        n_head=params.n_head,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config)
    scratch = tempfile.mkdtemp(prefix="sft-")  # the Trainer's own files stay out of the versioned out
    args = SFTConfig(
        output_dir=scratch,
        max_steps=params.steps,
        per_device_train_batch_size=params.batch_size,
        learning_rate=params.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=min(50, params.steps // 10),
        logging_steps=max(1, params.steps // 10),
        save_strategy="no",
        report_to=[],
        seed=seed,
        use_cpu=device.type == "cpu",
        # TRL defaults to bf16 autocast and gradient checkpointing: ~20x slower for a tiny model on CPU.
        bf16=False,
        gradient_checkpointing=False,
        max_length=128,
    )
    dataset = demo_dataset(train_prompts, params.demos_per_prompt, seed)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    result = trainer.train()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    model.generation_config.save_pretrained(out_dir)
    return {
        "source": "demo",
        "parameters": model.num_parameters(),
        "demonstrations": len(dataset),
        "train_loss": round(result.training_loss, 4),
    }


def pass_through_pretrained(name_or_path: str, device: torch.device, out_dir: Path) -> dict:
    """Copy a user's causal LM (local path or hub id) into the pipeline's versioned policy slot."""
    tokenizer = load_tokenizer(name_or_path)
    model = load_policy(name_or_path, device)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return {"source": name_or_path, "parameters": model.num_parameters()}

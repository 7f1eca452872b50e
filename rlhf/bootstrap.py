"""The starting policy: the tiny demo GPT-2 trained on demonstrations, or a pretrained model,
passed through or fine-tuned on the user's demonstrations.

Demo mode trains a byte-level BPE tokenizer on the synthetic domain, builds a small GPT-2 from
a config (no hub), and fine-tunes it on mixed-quality demonstrations with TRL's SFTTrainer,
loss on the response tokens only.

A pretrained model with `demonstrations` is fine-tuned the same way (TRL's prompt-completion
format, `completion_only_loss`), each demonstration rendered as the policy will later read it
(rlhf.chat): with a chat template, the prompt and completion go to TRL as chat messages and TRL
applies the template (a string prompt is one user message, a string completion one assistant
message); without one, as the plain-format strings `render_prompt` gives, with TRL appending EOS.
A `messages` row (a whole conversation) trains on its last assistant turn only, every turn before
it being the prompt: TRL's `assistant_only_loss` would train every assistant turn but needs
`{% generation %}` markers in the template, which most templates lack.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from datasets import Dataset, DatasetDict, load_from_disk
from peft import LoraConfig
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedModel, PreTrainedTokenizerBase
from trl import SFTConfig, SFTTrainer

from rlhf import chat
from rlhf.config import BootstrapPolicyParams, BootstrapSFTParams, Params
from rlhf.demo import domain
from rlhf.demo.tokenizer import train_tokenizer
from rlhf.errors import InputError
from rlhf.jsonl import json_objects
from rlhf.pretrained import load_policy, load_tokenizer
from rlhf.text import split_of
from rlhf.tracking import Tracker


class DemonstrationsError(InputError):
    """A demonstrations file is missing, empty, lacks a column or holds a malformed row."""


def demo_dataset(train_prompts: list[tuple[str, str]], per_prompt: int, seed: int) -> Dataset:
    demos = domain.demonstrations(train_prompts, per_prompt, seed)
    # The completion starts with a space: the policy generates " sure , ..." after "answer :".
    return Dataset.from_list([{"prompt": d.prompt, "completion": " " + d.response} for d in demos])


def train_demo_policy(
    params: BootstrapPolicyParams,
    train_prompts: list[tuple[str, str]],
    seed: int,
    device: torch.device,
    out_dir: Path,
    tracker: Tracker | None = None,
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
        # GPT-2's own `gelu_new`, computed in Python. PyTorch's fused kernel of the same function
        # (`gelu_pytorch_tanh`) makes SFT steps 10% faster (0.177 s against 0.197) but rounds
        # differently, and the demo's reward model is sensitive to rounding: over seeds 0-2 (2
        # threads) it held out 0.84, 0.74, 0.70 with the kernel and 0.84, 0.85, 0.72 without.
        # The README's figures are measured with this activation; a change of it needs them again.
    )
    tokenizer.model_max_length = config.n_positions  # the saved tokenizer states the model's real context
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
        # Batches stay drawn at random although 38% of their tokens are padding: grouping them by
        # length (train_sampling_strategy="group_by_length") halved a step's time but ended SFT at
        # loss 1.05 instead of 0.98, and PPO then moved unseen-topic on-topic by +0.03 and +0.06
        # (seeds 0, 1) instead of +0.36 and +0.05.
    )
    dataset = demo_dataset(train_prompts, params.demos_per_prompt, seed)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[tracker.trainer_callback()] if tracker else None,
    )
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


# --- A pretrained model fine-tuned on the user's demonstrations -----------------------------------


@dataclass(frozen=True)
class Demonstration:
    prompt: chat.Conversation
    """The turns the policy answers (a string prompt is one user message)."""
    completion: chat.Conversation
    """The assistant turns it is trained to write."""


def read_demonstrations(path: str | Path) -> list[Demonstration]:
    """Demonstrations from a .jsonl/.parquet/.csv file or a `datasets` save_to_disk directory.

    Columns `prompt` + `completion` (strings or chat messages), or `messages` (a conversation that
    ends with the assistant turn to learn). A bad file, column or row raises DemonstrationsError
    naming the file and the row (the line of a .jsonl)."""
    path = Path(path)
    columns, rows = _rows(path)
    if not rows:
        raise DemonstrationsError(f"{path}: no demonstrations")
    if "prompt" in columns or "completion" in columns:
        shape = "prompt_completion"
        missing = [c for c in ("prompt", "completion") if c not in columns]
    else:
        shape, missing = "messages", [] if "messages" in columns else ["prompt"]
    if missing:
        raise DemonstrationsError(
            f"{path}: missing column '{missing[0]}' (needs prompt and completion, or messages; found {columns})"
        )
    return [_demonstration(row, where, shape) for where, row in rows]


def _rows(path: Path) -> tuple[list[str], list[tuple[str, dict]]]:
    """(columns, [(where, row)]): each row with where it came from ("file:line" or "file: row n")."""
    if not path.exists():
        raise DemonstrationsError(f"{path}: not found")
    if path.is_dir():
        return _dataset_rows(path)
    if path.name.endswith((".jsonl", ".jsonl.gz")):
        records = list(json_objects(path, DemonstrationsError))
        columns = list(dict.fromkeys(key for _, record in records for key in record))
        return columns, [(f"{path}:{number}", record) for number, record in records]
    readers = {".parquet": pd.read_parquet, ".csv": lambda p: pd.read_csv(p, dtype=str, keep_default_na=False)}
    if path.suffix not in readers:
        raise DemonstrationsError(
            f"{path}: unsupported format (use .jsonl, .parquet, .csv or a save_to_disk directory)"
        )
    try:
        frame = readers[path.suffix](path)
    except Exception as error:
        raise DemonstrationsError(f"{path}: cannot read ({str(error).splitlines()[0]})") from None
    return list(frame.columns), [(f"{path}: row {n}", row) for n, row in enumerate(frame.to_dict("records"), 1)]


def _dataset_rows(path: Path) -> tuple[list[str], list[tuple[str, dict]]]:
    try:
        dataset = load_from_disk(str(path))
    except Exception as error:
        raise DemonstrationsError(f"{path}: not a `datasets` save_to_disk directory ({error})") from None
    if isinstance(dataset, DatasetDict):
        if "train" not in dataset:
            raise DemonstrationsError(f"{path}: a DatasetDict without a 'train' split (found {list(dataset)})")
        dataset = dataset["train"]
    return list(dataset.column_names), [(f"{path}: row {n}", row) for n, row in enumerate(dataset, 1)]


def _demonstration(row: dict, where: str, shape: str) -> Demonstration:
    if shape == "messages":
        turns = _messages(row.get("messages"), f"{where}: 'messages'", None)
        if turns[-1]["role"] != "assistant":
            raise DemonstrationsError(f"{where}: 'messages' must end with an assistant turn (the completion)")
        if len(turns) < 2:
            raise DemonstrationsError(f"{where}: 'messages' needs a turn before the last assistant turn (the prompt)")
        prompt, completion = turns[:-1], turns[-1:]
    else:
        prompt = _messages(row.get("prompt"), f"{where}: 'prompt'", "user")
        completion = _messages(row.get("completion"), f"{where}: 'completion'", "assistant")
        if any(m["role"] != "assistant" for m in completion):
            raise DemonstrationsError(f"{where}: 'completion' may hold assistant turns only")
    if not any(m["content"].strip() for m in completion):
        raise DemonstrationsError(f"{where}: the completion is empty")
    if not any(m["content"].strip() for m in prompt):
        raise DemonstrationsError(f"{where}: the prompt is empty")
    return Demonstration(prompt, completion)


def _messages(value: object, where: str, string_role: str | None) -> chat.Conversation:
    """A cell as chat messages. A string is one message of `string_role`, or with None a JSON list
    (a `messages` cell of a CSV); anything else must be a list of {role, content}."""
    if value is None:
        raise DemonstrationsError(f"{where}: missing")
    if isinstance(value, str) and string_role:
        return [{"role": string_role, "content": value}]
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise DemonstrationsError(f"{where}: not a JSON list of chat messages ({error.msg})") from None
    try:
        return chat.as_conversation(value, where)
    except InputError as error:
        raise DemonstrationsError(str(error)) from None


def split_demonstrations(
    demonstrations: Iterable[Demonstration], eval_fraction: float
) -> tuple[list[Demonstration], list[Demonstration]]:
    """(train, held out) by a hash of each prompt (rlhf.prompts.split_of of its chat.prompt_key):
    stable across runs and file order, and every demonstration of one prompt on the same side."""
    train, held_out = [], []
    for demonstration in demonstrations:
        key = chat.prompt_key(demonstration.prompt)
        (held_out if split_of(key, eval_fraction) == "test" else train).append(demonstration)
    return train, held_out


def sft_dataset(demonstrations: list[Demonstration], tokenizer: PreTrainedTokenizerBase) -> Dataset:
    """TRL prompt-completion rows, rendered as rlhf.chat renders them for this tokenizer."""
    if chat.has_chat_template(tokenizer):  # conversational: TRL applies the template
        return Dataset.from_list([{"prompt": d.prompt, "completion": d.completion} for d in demonstrations])
    rows = []
    for d in demonstrations:  # plain format: TRL tokenizes the strings and appends EOS
        prompt = chat.render_prompt(tokenizer, d.prompt)
        rows.append(
            {"prompt": prompt, "completion": chat.render_exchange(tokenizer, d.prompt, d.completion)[len(prompt) :]}
        )
    return Dataset.from_list(rows)


def uses_bf16(mixed_precision: str, device: torch.device) -> bool:
    if mixed_precision == "auto":
        return device.type == "cuda" and torch.cuda.is_bf16_supported()
    return mixed_precision == "bf16"


def sft_trainer(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    train: list[Demonstration],
    held_out: list[Demonstration],
    params: BootstrapSFTParams,
    seed: int,
    device: torch.device,
    scratch: str,
) -> SFTTrainer:
    """TRL's SFTTrainer with loss on the completion tokens only, LoRA adapters when lora_rank > 0."""
    args = SFTConfig(
        output_dir=scratch,
        num_train_epochs=params.epochs,
        per_device_train_batch_size=params.batch_size,
        per_device_eval_batch_size=params.batch_size,
        gradient_accumulation_steps=params.gradient_accumulation_steps,
        learning_rate=params.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=0.03,
        logging_steps=10,
        save_strategy="no",
        eval_strategy="no",  # evaluated once before and once after training, by finetune_pretrained
        report_to=[],
        seed=seed,
        use_cpu=device.type == "cpu",
        bf16=uses_bf16(params.mixed_precision, device),
        activation_checkpointing=params.gradient_checkpointing,  # transformers 5's name for it
        max_length=params.max_length,
        completion_only_loss=True,
    )
    lora = None
    if params.lora_rank:
        lora = LoraConfig(
            r=params.lora_rank,
            lora_alpha=params.lora_alpha,
            target_modules=params.lora_target_modules,
            lora_dropout=0.0,
            task_type="CAUSAL_LM",
        )
    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=sft_dataset(train, tokenizer),
        eval_dataset=sft_dataset(held_out, tokenizer) if held_out else None,
        processing_class=tokenizer,
        peft_config=lora,
    )


def finetune_pretrained(
    name_or_path: str,
    demonstrations_path: str | Path,
    params: BootstrapSFTParams,
    seed: int,
    device: torch.device,
    out_dir: Path,
    tracker: Tracker | None = None,
) -> dict:
    """SFT of a user's causal LM on their demonstrations; saved as a plain model (LoRA merged)."""
    # 1. Read and split the demonstrations first: bad input fails before any model loads.
    demonstrations = read_demonstrations(demonstrations_path)
    train, held_out = split_demonstrations(demonstrations, params.eval_fraction)
    if not train:
        raise DemonstrationsError(
            f"{demonstrations_path}: all {len(held_out)} demonstrations fall in the held-out split (lower sft.eval_fraction)"
        )
    # 2. Load; a full fine-tune keeps fp32 master weights and saves in the checkpoint's own dtype.
    tokenizer = load_tokenizer(name_or_path)
    model = load_policy(name_or_path, device)
    saved_dtype = model.dtype
    if not params.lora_rank:
        model = model.float()
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory(prefix="sft-") as scratch:  # the Trainer's files stay out of the out
        trainer = sft_trainer(model, tokenizer, train, held_out, params, seed, device, scratch)
        if tracker:
            trainer.add_callback(tracker.trainer_callback())
        # TRL drops a demonstration whose prompt alone fills max_length (no completion token left).
        kept_train, kept_held_out = len(trainer.train_dataset), len(trainer.eval_dataset or [])
        if not kept_train:
            raise DemonstrationsError(
                f"{demonstrations_path}: every training prompt fills sft.max_length={params.max_length} tokens"
            )
        # 3. Held-out loss before, train, held-out loss after.
        before = trainer.evaluate()["eval_loss"] if kept_held_out else None
        result = trainer.train()
        after = trainer.evaluate()["eval_loss"] if kept_held_out else None
    # 4. Merge LoRA into the weights, so later stages load a plain model.
    trained = trainer.model.merge_and_unload() if params.lora_rank else trainer.model
    save_policy(trained.to(saved_dtype), tokenizer, out_dir)
    metrics = {
        "source": name_or_path,
        "demonstrations": len(demonstrations),
        "train_demonstrations": len(train),
        "heldout_demonstrations": len(held_out),
        "format": "chat_template" if chat.has_chat_template(tokenizer) else "plain",
        "lora_rank": params.lora_rank,
        "parameters": trained.num_parameters(),
        "train_loss": round(result.training_loss, 4),
        "train_steps": result.global_step,
        "dropped_too_long": len(train) + len(held_out) - kept_train - kept_held_out,
    }
    if kept_held_out:
        metrics |= {"heldout_loss_before": round(before, 4), "heldout_loss": round(after, 4)}
    return metrics


def save_policy(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out_dir: Path) -> None:
    """HF save_pretrained layout: weights and config, generation config, tokenizer with its chat template."""
    model.save_pretrained(out_dir)
    model.generation_config.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def bootstrap_pretrained(
    params: BootstrapPolicyParams, seed: int, device: torch.device, out_dir: Path, tracker: Tracker | None = None
) -> dict:
    """source: pretrained: fine-tune `model` on `demonstrations` when given, else pass it through."""
    if params.demonstrations:
        return finetune_pretrained(params.model, params.demonstrations, params.sft, seed, device, out_dir, tracker)
    return pass_through_pretrained(params.model, device, out_dir)


def bootstrap_policy(params: Params, device: torch.device, out_dir: Path, tracker: Tracker | None = None) -> dict:
    """The bootstrap_policy stage: the starting policy into `out_dir` (the demo's, or a pretrained
    model passed through or fine-tuned), its SFT steps to `tracker`; returns its metrics."""
    section = params.bootstrap_policy
    if section.source == "demo":
        # Demonstrations only for training prompts: held-out prompts stay unseen until evaluation.
        train = [
            (p, t)
            for p, t in domain.all_prompts()
            if domain.split(p, t, params.collect_prompts.test_fraction) == "train"
        ]
        return train_demo_policy(section, train, params.seed, device, out_dir, tracker)
    return bootstrap_pretrained(section, params.seed, device, out_dir, tracker)

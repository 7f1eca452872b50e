"""Pretrained models and tokenizers: loading, devices, hashing; one code path for the tiny demo and real models.

A `name_or_path` is a local directory or a hub id; nothing here downloads unless the user
names a hub id (the embedded default only ever passes local directories).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.activations import FastGELUActivation, GELUTanh, NewGELUActivation

from rlhf.errors import InputError


def resolve_device(device: str | torch.device) -> torch.device:
    """params.yaml's device name as a torch.device (a torch.device passes through)."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("params.yaml: device: 'cuda' was asked for but no CUDA device is visible")
    return torch.device(device)


# What a saved tokenizer or model directory holds at least one of (save_pretrained's layouts;
# adapter_config.json: a PEFT adapter, which transformers loads with its base model).
TOKENIZER_FILES = (
    "tokenizer_config.json",
    "tokenizer.json",
    "vocab.json",
    "vocab.txt",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "spm.model",
)
MODEL_FILES = ("config.json", "adapter_config.json")


def refuse_a_directory_without(name_or_path: str | Path, files: tuple[str, ...], what: str) -> None:
    """InputError when `name_or_path` is a local directory holding none of `files`: transformers
    would otherwise fail further on with a misleading hint (install sentencepiece, for an empty folder)."""
    path = Path(name_or_path)
    if path.is_dir() and not any((path / name).is_file() for name in files):
        raise InputError(
            f"{path}: no saved {what} here (none of {', '.join(files)}); name the directory save_pretrained wrote"
        )


def load_tokenizer(name_or_path: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer of a model directory (or hub id), its `model_max_length` the model's context
    (`context_length`): every stage loads its tokenizers here, so every tokenizer it saves states it."""
    refuse_a_directory_without(name_or_path, TOKENIZER_FILES, "tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(str(name_or_path))
    if tokenizer.pad_token is None:  # many causal LMs ship without one; EOS is the usual stand-in
        tokenizer.pad_token = tokenizer.eos_token
    positions = context_length(name_or_path)
    if positions is not None and tokenizer.model_max_length > positions:
        tokenizer.model_max_length = positions
    return tokenizer


def context_length(name_or_path: str | Path) -> int | None:
    """The positions the model of a directory (or hub id) has: its config's `n_positions` (GPT-2)
    or `max_position_embeddings` (most others; a multimodal model's text config). None where there
    is no config or it names none (relative positions, a tokenizer-only directory).

    A tokenizer built from scratch, or shipped without a limit, says `model_max_length` = 1e30, so
    `truncation=True` in plain transformers cuts nothing and a long input overruns the positions."""
    try:
        config, _ = PretrainedConfig.get_config_dict(str(name_or_path))
    except OSError:  # a hub repository of a tokenizer alone
        return None
    for section in (config, config.get("text_config") or {}):
        for key in ("n_positions", "max_position_embeddings"):
            if isinstance(section.get(key), int):
                return section[key]
    return None


def load_policy(name_or_path: str | Path, device: torch.device) -> PreTrainedModel:
    refuse_a_directory_without(name_or_path, MODEL_FILES, "model")
    model = AutoModelForCausalLM.from_pretrained(str(name_or_path))
    return model.to(device)


def load_scalar_head_model(name_or_path: str | Path, device: torch.device, pad_token_id: int) -> PreTrainedModel:
    """A model with one scalar output: a reward model, or a critic initialised from one."""
    refuse_a_directory_without(name_or_path, MODEL_FILES, "model")
    model = AutoModelForSequenceClassification.from_pretrained(str(name_or_path), num_labels=1)
    model.config.pad_token_id = pad_token_id
    return model.to(device)


def use_fused_gelu(model: torch.nn.Module) -> torch.nn.Module:
    """Swap the Python tanh-GELU (GPT-2's `gelu_new`) for PyTorch's fused kernel of the same function.

    transformers documents `GELUTanh` as equivalent to `NewGELUActivation` and much faster; they
    differ by float rounding only. On the tiny CPU default it saves about a tenth of each forward.
    """
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, (NewGELUActivation, FastGELUActivation)):
                setattr(parent, name, GELUTanh())
    return model


def backbone(model: PreTrainedModel) -> torch.nn.Module:
    """The transformer under a task head (GPT2's `transformer`, Llama's `model`, ...)."""
    return getattr(model, model.base_model_prefix)


def checkpoint_hash(directory: str | Path) -> str:
    """A short content hash of a saved model directory: the provenance of what it generated."""
    digest = hashlib.sha256()
    for path in sorted(Path(directory).rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(directory).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, as generate() computes them.  (B, T)"""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)

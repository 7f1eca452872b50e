"""Demonstrations and saved pretrained models for the SFT and user-input tests."""

import copy
import json

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

TOPICS = ("cats", "dogs", "owls", "bees", "tea", "bread", "chess", "maps", "kites", "lakes", "snow", "rain", "boats")
TOPICS += ("bikes", "stars", "clocks")
ASKS = ("tell me about {} .", "what do you know about {} ?", "share a fact about {} .")


# A small ChatML-like template: each turn closed by EOS, so the model learns to stop.
TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def demonstration_rows() -> list[dict]:
    """48 prompt/completion rows, one shape of answer to learn."""
    return [{"prompt": ask.format(t), "completion": answer(t)} for t in TOPICS for ask in ASKS]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def save_pretrained_model(directory, tokenizer, arch="llama", chat_template=TEMPLATE, pad=True, dtype=torch.float32):
    """A tiny random causal LM and its tokenizer, as a user's pretrained checkpoint."""
    settings = {
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        "bos_token_id": tokenizer.eos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id if pad else None,
    }
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**settings)) if arch == "llama" else Qwen2ForCausalLM(Qwen2Config(**settings))
    model.to(dtype).save_pretrained(directory)
    saved = copy.deepcopy(tokenizer)  # the module's tokenizer stays as it is
    saved.chat_template = chat_template
    if not pad:
        saved.pad_token = None
    saved.save_pretrained(directory)
    return directory


def answer(topic: str) -> str:
    return f"sure . {topic} are lovely and {topic} are useful ."

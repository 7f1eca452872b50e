"""Tiny random models' configurations, sized for the CPU tests, and the toy domain's prompts."""

from rlhf.demo import domain


def tiny_gpt2_config(tokenizer, **extra):
    from transformers import GPT2Config

    settings = {
        "vocab_size": len(tokenizer),
        "n_positions": 128,
        "n_embd": 32,
        "n_layer": 1,
        "n_head": 2,
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    return GPT2Config(**{**settings, **extra})


# The toy domain's first 40 prompts train; the next 8 are the stage's test split (its in-loop evaluation's prompts).
PROMPTS = [prompt for prompt, _ in domain.all_prompts()[:40]]
TOPICS = [topic for _, topic in domain.all_prompts()[:40]]
HELD_OUT = domain.all_prompts()[40:48]

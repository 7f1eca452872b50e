"""Tiny random models' configurations, sized for the CPU tests."""


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

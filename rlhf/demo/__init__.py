"""The embedded default: a synthetic instruction domain, its tokenizer and a tiny GPT-2 policy."""

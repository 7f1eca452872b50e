"""A stand-in for your instruct model, for trying the real-model recipe on a CPU without a hub.

Usage: .venv/bin/python configs/real-model/stand_in_policy.py OUT_DIR [TEXT_FILE ...]

Writes a small random Qwen2 causal LM (2 layers, 64 wide) and a byte-level BPE tokenizer trained
on the text files given (default: this folder's example prompts and demonstrations), with Qwen2's
ChatML conventions: `<|im_start|>role ... <|im_end|>` turns, `<|im_end|>` as EOS, `<|endoftext|>`
as padding. It knows no language: its answers are noise, and what it is for is walking every
command of the recipe (SFT through its chat template, sampling, serving it as an OpenAI-compatible
judge, PPO, evaluation) at CPU size. On a GPU, name your real model in params.yaml instead.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

HERE = Path(__file__).resolve().parent
EXAMPLES = [HERE / "data" / "my_prompts.jsonl", HERE / "data" / "demonstrations.jsonl"]
CONTEXT = 1024  # tokens: a judge's comparison of two answers fits, as a real judge's context would
# Qwen2's template, shortened: no tools, no default system prompt.
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def texts(path: Path) -> list[str]:
    """Every string in a JSONL file's values (prompts, completions, message contents); a plain
    text file's lines."""
    if path.suffix != ".jsonl":
        return path.read_text().splitlines()
    found: list[str] = []

    def walk(value: object) -> None:
        if isinstance(value, str):
            found.append(value)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    for line in path.read_text().splitlines():
        if line.strip():
            walk(json.loads(line))
    return found


def chatml_tokenizer(corpus: list[str]) -> PreTrainedTokenizerFast:
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_input_names=["input_ids", "attention_mask"],  # no token_type_ids (FACTS: they break GPT-style models)
        model_max_length=CONTEXT,
    )
    tokenizer.chat_template = CHATML
    return tokenizer


def save_stand_in(out_dir: Path, corpus: list[str], seed: int = 0) -> None:
    tokenizer = chatml_tokenizer(corpus)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=CONTEXT,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,  # ChatML writes no BOS
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    Qwen2ForCausalLM(config).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def main(argv: list[str]) -> None:
    if not argv or argv[0].startswith("-"):
        sys.exit(__doc__.split("\n\n")[1])
    out_dir, files = Path(argv[0]), [Path(name) for name in argv[1:]] or EXAMPLES
    missing = [str(path) for path in files if not path.is_file()]
    if missing:
        sys.exit(f"stand_in_policy: no such file: {', '.join(missing)}")
    save_stand_in(out_dir, [text for path in files for text in texts(path)])
    print(f"wrote a stand-in policy to {out_dir} (random weights; a tokenizer from {len(files)} file(s))")


if __name__ == "__main__":
    main(sys.argv[1:])

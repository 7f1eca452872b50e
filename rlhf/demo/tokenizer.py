"""A byte-level BPE tokenizer trained locally on the demo corpus (no hub download)."""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

EOS = "<|endoftext|>"
PAD = "<|pad|>"
# The demo policy's positions (rlhf.bootstrap's GPT2Config n_positions): the tokenizer's
# model_max_length, so plain transformers' `truncation=True` cuts a long input to what the model reads.
DEMO_CONTEXT_LENGTH = 256

# The demo's chat template, so the embedded default walks the same code path as a real instruct
# model (rlhf.chat). It renders the turns the way the demo has always written them: a user turn is
# its text ("tell me about owls . answer :"), an assistant turn follows after one space and ends
# with EOS, later turns follow after a space. The generation prompt adds nothing: the demo's
# prompts end with their own cue, "answer :".
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if not loop.first %} {% endif -%}"
    "{%- if message['role'] == 'assistant' -%}{{ message['content'] | trim }}{{ eos_token }}"
    "{%- else -%}{{ message['content'] }}{%- endif -%}"
    "{%- endfor -%}"
)


def train_tokenizer(
    texts: list[str], vocab_size: int, model_max_length: int = DEMO_CONTEXT_LENGTH
) -> PreTrainedTokenizerFast:
    """A byte-level BPE of `vocab_size` on `texts`, with the demo's chat template; `model_max_length`
    is the context of the model it serves (transformers' default, 1e30, would never truncate)."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token=EOS,
        bos_token=EOS,
        pad_token=PAD,
        # Without this the tokenizer also returns token_type_ids, which GPT-2 adds to its
        # embeddings: training loss looks fine but generation degenerates (see FACTS.md).
        model_input_names=["input_ids", "attention_mask"],
        model_max_length=model_max_length,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer

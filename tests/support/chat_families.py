"""Tiny tokenizers and random models that follow real chat families' conventions (FACTS.md,
"Seen or read on 2026-12-03"), built in code: no hub.

Each family is a byte-level BPE trained on the demo corpus with the family's special tokens, its
chat template copied from the real one (shortened: no tools), a post-processor that adds BOS where
the real tokenizer does (Llama-3, Gemma, Mistral: so re-tokenising a rendered template with the
special tokens would write a second BOS), and a 2-layer, 64-wide Llama whose generation config
lists the family's stop ids as the real one does.

- chatml_eos_im_end: Qwen2/2.5 instruct. No BOS, a turn ends with `<|im_end|>`, which is the EOS;
  pad `<|endoftext|>` (distinct).
- chatml_pad_is_eos: Qwen2 base with ChatML. EOS and pad are both `<|endoftext|>`; a turn still
  ends with `<|im_end|>`, found only in the template.
- llama3: the template writes `<|begin_of_text|>`; a turn ends with `<|eot_id|>` while the EOS is
  `<|end_of_text|>`; generation_config.eos_token_id is [eot, eos].
- gemma: `<bos>` in the template, `<start_of_turn>` / `<end_of_turn>`, no system role (the template
  raises on one); generation_config lists EOS only (as Gemma 1's does), so `<end_of_turn>` is found
  in the template.
- mistral: `<s>[INST] ... [/INST]answer</s>`, BOS in the template; pad `<unk>`.
- base: no chat template (the plain format); BOS added by the tokenizer, EOS `</s>`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification, PreTrainedTokenizerFast

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3 = (
    "{% for message in messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}"
    "{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
GEMMA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
MISTRAL = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)


@dataclass(frozen=True)
class Family:
    name: str
    specials: tuple[str, ...]  # special tokens, in id order from 0
    template: str | None
    eos: str
    pad: str
    bos: str | None  # the BOS the family's sequences start with (template or tokenizer); None: none
    bos_by_tokenizer: bool  # the tokenizer's post-processor adds BOS (re-tokenising a rendering doubles it)
    turn_end: str  # the token that ends an assistant turn
    generation_eos: tuple[str, ...]  # generation_config.eos_token_id
    system: bool  # the template accepts a system message


FAMILIES = {
    "chatml_eos_im_end": Family(
        "chatml_eos_im_end",
        ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        CHATML,
        "<|im_end|>",
        "<|endoftext|>",
        None,
        False,
        "<|im_end|>",
        ("<|im_end|>",),
        True,
    ),
    "chatml_pad_is_eos": Family(
        "chatml_pad_is_eos",
        ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        CHATML,
        "<|endoftext|>",
        "<|endoftext|>",
        None,
        False,
        "<|im_end|>",
        ("<|endoftext|>",),
        True,
    ),
    "llama3": Family(
        "llama3",
        (
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
            "<|finetune_right_pad_id|>",
        ),
        LLAMA3,
        "<|end_of_text|>",
        "<|finetune_right_pad_id|>",
        "<|begin_of_text|>",
        True,
        "<|eot_id|>",
        ("<|eot_id|>", "<|end_of_text|>"),
        True,
    ),
    "gemma": Family(
        "gemma",
        ("<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"),
        GEMMA,
        "<eos>",
        "<pad>",
        "<bos>",
        True,
        "<end_of_turn>",
        ("<eos>",),
        False,
    ),
    "mistral": Family(
        "mistral",
        ("<unk>", "<s>", "</s>", "[INST]", "[/INST]"),
        MISTRAL,
        "</s>",
        "<unk>",
        "<s>",
        True,
        "</s>",
        ("</s>",),
        False,
    ),
    "base": Family("base", ("<unk>", "<s>", "</s>"), None, "</s>", "<unk>", "<s>", True, "</s>", ("</s>",), True),
}


def corpus() -> list[str]:
    from rlhf.demo import domain

    return domain.corpus(seed=0, size=400) + ["system user assistant model Human Assistant System Rating rate"]


@cache
def tokenizer_for(name: str) -> PreTrainedTokenizerFast:
    """The family's tokenizer (cached: treat it as read-only)."""
    family = FAMILIES[name]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=500,
        special_tokens=list(family.specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus(), trainer=trainer)
    if family.bos_by_tokenizer:
        bos_id = bpe.token_to_id(family.bos)
        bpe.post_processor = processors.TemplateProcessing(
            single=f"{family.bos} $A", pair=f"{family.bos} $A $B", special_tokens=[(family.bos, bos_id)]
        )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token=family.eos,
        pad_token=family.pad,
        bos_token=family.bos,
        model_input_names=["input_ids", "attention_mask"],
    )
    tokenizer.chat_template = family.template
    return tokenizer


def llama_config(tokenizer: PreTrainedTokenizerFast, family: Family, **extra) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=[tokenizer.convert_tokens_to_ids(t) for t in family.generation_eos],
        tie_word_embeddings=True,
        **extra,
    )


def policy_for(name: str, seed: int = 0) -> LlamaForCausalLM:
    """A random tiny Llama for the family, its generation config listing the family's stop ids."""
    family, tokenizer = FAMILIES[name], tokenizer_for(name)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama_config(tokenizer, family)).eval()
    ids = [tokenizer.convert_tokens_to_ids(t) for t in family.generation_eos]
    model.generation_config.eos_token_id = ids if len(ids) > 1 else ids[0]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def reward_model_for(name: str, seed: int = 0) -> LlamaForSequenceClassification:
    family, tokenizer = FAMILIES[name], tokenizer_for(name)
    torch.manual_seed(seed)
    return LlamaForSequenceClassification(llama_config(tokenizer, family, num_labels=1)).eval()


def conversation_for(name: str) -> list[dict]:
    """One multi-turn conversation the family's template accepts (a system turn where it has the role)."""
    turns = [
        {"role": "user", "content": "tell me about owls . answer :"},
        {"role": "assistant", "content": "sure , owls hoot at night ."},
        {"role": "user", "content": "what do you know about cats ? answer :"},
    ]
    if FAMILIES[name].system:
        turns = [{"role": "system", "content": "you answer about animals ."}, *turns]
    return turns


def token_id(name: str, token: str) -> int:
    return tokenizer_for(name).convert_tokens_to_ids(token)

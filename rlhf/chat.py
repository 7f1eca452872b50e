"""Conversations: how a prompt (a string or chat messages) becomes the text each model reads.

A prompt follows TRL's dataset conventions: a string, or a list of chat messages
(`{"role": "user" | "assistant" | "system", "content": ...}`) that may run over several turns.
Text crosses module boundaries as conversations, never as one model's token ids: each model
(policy, reward model, cost model, judge) renders the conversation with its own tokenizer.

- With a chat template (every instruct model, and the demo's tokenizer), `render_prompt` is
  `apply_chat_template(..., add_generation_prompt=True)` and `render_exchange` renders the prompt
  with the response appended as assistant turns.
- Without one (a base LM, an encoder such as MiniLM), the documented plain format: a prompt that
  is one user message is its content as it is (the plain "prompt" string of TRL's standard
  format); any other conversation is the HH-RLHF transcript, "\\n\\nHuman: ...\\n\\nAssistant: ..."
  (system turns as "System:"), ending with "\\n\\nAssistant:" for the policy to continue. The
  response follows after one space.

`stop_token_ids` is where the policy's turn ends: sampling stops at any of them, DPO ends its
completions with the one the template writes.

`transcript` is the human-readable form that the store's `prompt` column, the judges' prompts and
the ranking page's fallback show: the content itself for one user message, else the turns.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

from rlhf.errors import InputError

if TYPE_CHECKING:  # the rules judge's stage renders no template: it starts without transformers
    from transformers import PreTrainedTokenizerBase

Message = dict[str, str]
Conversation = list[Message]

ROLES = ("system", "user", "assistant")
PLAIN_SPEAKERS = {"system": "System", "user": "Human", "assistant": "Assistant"}


def as_conversation(prompt: str | Sequence[Message], where: str = "prompt") -> Conversation:
    """A prompt as chat messages: a string is one user message. Refuses malformed messages,
    naming `where` (a file and row, a column)."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if hasattr(prompt, "tolist"):  # a numpy array of dicts, as pandas reads a list column from Parquet
        prompt = prompt.tolist()
    if not isinstance(prompt, (list, tuple)) or not prompt:
        raise InputError(
            f"{where}: expected a string or a non-empty list of chat messages, got {type(prompt).__name__}"
        )
    messages = []
    for turn, message in enumerate(prompt, 1):
        if not isinstance(message, dict) or not {"role", "content"} <= set(message):
            raise InputError(f"{where}: message {turn} must be an object with 'role' and 'content'")
        role, content = message["role"], message["content"]
        if role not in ROLES or not isinstance(content, str):
            raise InputError(f"{where}: message {turn}: role must be one of {'/'.join(ROLES)} and content a string")
        messages.append({"role": role, "content": content})
    return messages


def from_json(messages_json: str) -> Conversation:
    return as_conversation(json.loads(messages_json))


def conversations_of(prompts) -> list[Conversation]:
    """The conversations of a prompts frame: its `messages` JSON column, or for a frame of plain
    strings (written before conversations, or by hand) its `prompt` column."""
    if "messages" in prompts:
        return [from_json(m) for m in prompts["messages"]]
    return [as_conversation(p) for p in prompts["prompt"]]


def to_json(conversation: Conversation) -> str:
    """The canonical JSON of a conversation: the store's `messages` columns and content keys."""
    return json.dumps(
        [{"role": m["role"], "content": m["content"]} for m in conversation], ensure_ascii=False, separators=(",", ":")
    )


def assistant_turns(response: str | Sequence[Message]) -> Conversation:
    """A response as the messages that follow the prompt: a string is one assistant message."""
    if isinstance(response, str):
        return [{"role": "assistant", "content": response}]
    return as_conversation(response, "response")


def is_single_user_turn(conversation: Conversation) -> bool:
    return len(conversation) == 1 and conversation[0]["role"] == "user"


def transcript(conversation: Conversation) -> str:
    """Human-readable text: one user message as it is, else each turn as "Speaker: content"."""
    if is_single_user_turn(conversation):
        return conversation[0]["content"]
    return "\n\n".join(f"{PLAIN_SPEAKERS[m['role']]}: {m['content']}" for m in conversation)


def last_user_content(conversation: Conversation) -> str:
    """The newest user turn: what a response must answer (the rules judge reads its topic from it)."""
    return next((m["content"] for m in reversed(conversation) if m["role"] == "user"), "")


def has_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_prompt(tokenizer: PreTrainedTokenizerBase, conversation: Conversation) -> str:
    """The text a policy continues: its chat template with the generation prompt, or the plain format."""
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    if is_single_user_turn(conversation):
        return conversation[0]["content"]
    return "".join(f"\n\n{PLAIN_SPEAKERS[m['role']]}: {m['content']}" for m in conversation) + "\n\nAssistant:"


def render_exchange(
    tokenizer: PreTrainedTokenizerBase, conversation: Conversation, response: str | Sequence[Message]
) -> str:
    """The whole exchange a reward, cost or value model reads: the prompt and the response's turns."""
    turns = assistant_turns(response)
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(conversation + turns, tokenize=False)
    text = render_prompt(tokenizer, conversation) + " " + turns[0]["content"].strip()
    return text + "".join(f"\n\n{PLAIN_SPEAKERS[m['role']]}: {m['content']}" for m in turns[1:])


def split_exchange(
    tokenizer: PreTrainedTokenizerBase | None, conversation: Conversation, response, who: str
) -> tuple[str, str]:
    """(prompt text, completion text): the text the policy continues and the exact text after it in
    the rendered exchange, so that the two joined are the exchange. A template that renders the
    prompt alone otherwise than as the start of the exchange is refused, naming `who` asked."""
    prompt_text = render_prompt(tokenizer, conversation)
    exchange = render_exchange(tokenizer, conversation, response)
    if not exchange.startswith(prompt_text):
        raise InputError(
            f"{who}: the chat template renders the prompt alone (with the generation prompt) otherwise than as "
            "the start of the prompt followed by the response"
        )
    return prompt_text, exchange[len(prompt_text) :]


def add_special_tokens_for(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether tokenising rendered text should add the tokenizer's special tokens: not when a chat
    template wrote them already (a second BOS otherwise), yes for the plain format (BERT's [CLS])."""
    return not has_chat_template(tokenizer)


STOP_PROBE = "stop-probe-7261"  # an assistant message whose end the template's turn end follows


def template_turn_end(tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The special token a chat template writes right after an assistant message (ChatML's
    `<|im_end|>`, Llama-3's `<|eot_id|>`, Gemma's `<end_of_turn>`, Mistral's `</s>`), found by
    rendering a one-exchange conversation; None without a template, or where the template writes
    no special token there (or refuses the probe conversation)."""
    if not has_chat_template(tokenizer):
        return None
    probe = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": STOP_PROBE}]
    try:
        text = tokenizer.apply_chat_template(probe, tokenize=False)
    except Exception:
        return None
    end = text.rfind(STOP_PROBE)
    after = tokenizer(text[end + len(STOP_PROBE) :], add_special_tokens=False)["input_ids"] if end >= 0 else []
    special = set(tokenizer.all_special_ids) | {
        i for i, token in getattr(tokenizer, "added_tokens_decoder", {}).items() if token.special
    }
    return after[0] if after and after[0] in special else None


def stop_token_ids(tokenizer: PreTrainedTokenizerBase, model=None) -> list[int]:
    """Every token that ends the policy's turn: the tokenizer's EOS, the model's
    `generation_config.eos_token_id` (an int or a list: Llama-3 lists `<|eot_id|>` beside
    `<|end_of_text|>`), and the chat template's turn end (`template_turn_end`). Sampling stops at
    the first of any of them. The tokenizer's EOS comes first."""
    ids = [tokenizer.eos_token_id]
    config = getattr(model, "generation_config", None) or getattr(model, "config", None)
    configured = getattr(config, "eos_token_id", None)
    ids += configured if isinstance(configured, (list, tuple)) else [configured]
    ids.append(template_turn_end(tokenizer))
    return list(dict.fromkeys(int(i) for i in ids if i is not None))


def prompt_key(conversation: Conversation) -> str:
    """The text a prompt's id and split are hashed from: a single user message's content (so a
    string prompt keeps the id it always had), else the canonical JSON of the turns."""
    return conversation[0]["content"] if is_single_user_turn(conversation) else to_json(conversation)

"""How a reward, cost or value model reads an exchange: one convention for training and scoring.

1. Render the prompt's conversation and the response with the scorer's own tokenizer
   (`rlhf.chat.render_exchange`: its chat template, or the plain format), so a reward model may
   have another tokenizer than the policy.
2. End the text: a chat template ends the assistant turn itself (the demo's with EOS, Qwen's with
   `<|im_end|>`), so its rendering is taken as it is; the plain format gets the tokenizer's EOS
   appended, where it has one (BERT-style encoders have none and end with [SEP] instead).
3. Tokenise with the special tokens only for the plain format (a template already wrote BOS), and
   cut a text longer than the model's `max_length` from the left: the score is read at the end,
   so the end is what must stay (the tokenizer keeps its own [CLS]/[SEP]). The length a model was
   trained with is saved in its config (`scoring_max_length`) and scoring cuts at it too.
4. The score is read where the sequence classifier reads it: the last non-padding token of a causal
   LM, [CLS] of an encoder. Where the padding token is EOS (most pretrained causal LMs), a trailing
   EOS counts as padding, so the score is read at the last text token: in training and scoring alike.

Training (`rlhf.reward_models.train`, `rlhf.reward_models.kwise`, `rlhf.reward_models.cost`) hands these token ids to the trainers
pre-tokenised, and every scorer (PPO's reward, evaluate, the reward-model judge) goes through
`score_exchanges`, so both read the same tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase

from rlhf import chat


def exchange_text(tokenizer: PreTrainedTokenizerBase, conversation: chat.Conversation, response) -> str:
    """Steps 1-2: the text a scorer reads for one (prompt conversation, response)."""
    return ended(tokenizer, chat.render_exchange(tokenizer, conversation, response))


def ended(tokenizer: PreTrainedTokenizerBase, text: str) -> str:
    """Step 2: a rendered exchange as the scorer reads it: the plain format ends with the
    tokenizer's EOS (appended once, where it has one); a chat template's rendering as it is."""
    if not chat.has_chat_template(tokenizer) and tokenizer.eos_token and not text.endswith(tokenizer.eos_token):
        text += tokenizer.eos_token
    return text


def exchange_texts(
    tokenizer: PreTrainedTokenizerBase, conversations: Sequence[chat.Conversation], responses: Sequence
) -> list[str]:
    return [exchange_text(tokenizer, c, r) for c, r in zip(conversations, responses)]


def frame_exchanges(frame, response: str) -> tuple[list[chat.Conversation], list[chat.Conversation]]:
    """(prompt conversations, response turns) of a snapshot frame's rows (rlhf.snapshot): the
    `prompt_messages` and `{response}_messages` columns (response: chosen, rejected or response);
    a frame of plain texts only (`prompt`, `{response}`) is read as one-turn conversations."""
    if "prompt_messages" not in frame:
        return [chat.as_conversation(p) for p in frame["prompt"]], [chat.assistant_turns(r) for r in frame[response]]
    return [chat.from_json(m) for m in frame["prompt_messages"]], [
        chat.from_json(m) for m in frame[f"{response}_messages"]
    ]


def frame_texts(tokenizer: PreTrainedTokenizerBase, frame, response: str) -> list[str]:
    """Rendered exchanges of a snapshot frame's rows (see `frame_exchanges`)."""
    return exchange_texts(tokenizer, *frame_exchanges(frame, response))


def encode(tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int | None = None) -> list[list[int]]:
    """Step 3: token ids of rendered exchanges, the longer ones cut from the left to `max_length`."""
    side = tokenizer.truncation_side
    tokenizer.truncation_side = "left"
    try:
        return tokenizer(
            texts,
            add_special_tokens=chat.add_special_tokens_for(tokenizer),
            truncation=max_length is not None,
            max_length=max_length,
        )["input_ids"]
    finally:
        tokenizer.truncation_side = side


def trained_max_length(model: torch.nn.Module) -> int | None:
    """The max_length a reward or cost model was trained with (its config's scoring_max_length)."""
    members = getattr(model, "members", None)  # a RewardEnsemble: its members share it
    config = getattr(members[0] if members else model, "config", None)
    return getattr(config, "scoring_max_length", None)


def _pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def batch_of(tokenizer: PreTrainedTokenizerBase, ids: list[list[int]], device: torch.device) -> dict:
    """Right-padded input_ids and attention_mask of token-id lists.  (B, T), (B, T)"""
    width = max(len(row) for row in ids)
    pad = _pad_token_id(tokenizer)
    input_ids = torch.tensor([row + [pad] * (width - len(row)) for row in ids], device=device)
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in ids], device=device)
    return {"input_ids": input_ids, "attention_mask": mask}


@torch.no_grad()
def score_texts(
    model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, texts: list[str], batch_size: int = 128
) -> torch.Tensor:
    """Scores of rendered exchanges (`exchange_text`), in batches, cut as the model was trained.  (N,)

    Each distinct text is scored once (a held-out comparison set names each of a prompt's K
    responses in K - 1 pairs), in batches of similar lengths, so little of the work is padding."""
    device = next(model.parameters()).device
    distinct = list(dict.fromkeys(texts))
    ids = encode(tokenizer, distinct, trained_max_length(model))
    by_length = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    scores = torch.zeros(len(distinct), device=device)
    for start in range(0, len(by_length), batch_size):
        rows = by_length[start : start + batch_size]
        batch = batch_of(tokenizer, [ids[i] for i in rows], device)
        scores[torch.tensor(rows, device=device)] = model(**batch).logits[:, 0].float()
    position = {text: i for i, text in enumerate(distinct)}
    return scores[torch.tensor([position[text] for text in texts], dtype=torch.long, device=device)]


def score_exchanges(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    conversations: Sequence[chat.Conversation],
    responses: Sequence,
    batch_size: int = 128,
) -> torch.Tensor:
    """The scorer's reward for each (prompt conversation, response).  (N,)"""
    return score_texts(model, tokenizer, exchange_texts(tokenizer, conversations, responses), batch_size)

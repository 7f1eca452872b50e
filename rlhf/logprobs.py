"""Log-probabilities of sampled responses under a causal LM: shared by PPO and evaluation."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from rlhf.pretrained import position_ids_from_mask


def joined_inputs(query_ids, query_mask, response_ids, mask):
    """Prompt and response as one left-padded sequence: (input_ids, attention_mask, position_ids), each (B, Q+T)."""
    input_ids = torch.cat([query_ids, response_ids], dim=1)
    attention_mask = torch.cat([query_mask, mask.to(query_mask.dtype)], dim=1)
    return input_ids, attention_mask, position_ids_from_mask(attention_mask)


def response_logits(model: PreTrainedModel, query_ids, query_mask, response_ids, mask, temperature: float):
    """Logits that predicted each response token, scaled as at sampling time.  (B, T, V)"""
    input_ids, attention_mask, position_ids = joined_inputs(query_ids, query_mask, response_ids, mask)
    steps = response_ids.shape[1]
    # logits_to_keep: the LM head runs on the positions that predict response tokens, not on the prompt.
    logits = model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, logits_to_keep=steps + 1
    ).logits
    return logits[:, :-1] / temperature


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p(token) under the logits.  (B, T, V), (B, T) -> (B, T)"""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)

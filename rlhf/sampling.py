"""Batched generation: K responses per prompt, left-padded, KV cache, stop at EOS."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pandas as pd
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlhf.models import position_ids_from_mask
from rlhf.text import content_id

RESPONSE_COLUMNS = ["response_id", "prompt_id", "sample_index", "response", "policy_checkpoint", "sampling"]


@dataclass
class Generation:
    query_ids: torch.Tensor  # (B, Q) prompt tokens, left-padded
    query_mask: torch.Tensor  # (B, Q) 1 on prompt tokens
    response_ids: torch.Tensor  # (B, R) sampled tokens; pad after the first EOS
    response_mask: torch.Tensor  # (B, R) 1 up to and including the first EOS
    ended: torch.Tensor  # (B,) True where the response emitted EOS
    texts: list[str]  # (B,) decoded responses, special tokens dropped


def mask_after_eos(response_ids: torch.Tensor, eos_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask, ended): mask keeps tokens up to and including the first EOS.  (B, R), (B,)"""
    is_eos = response_ids == eos_token_id
    eos_seen_before = (is_eos.cumsum(-1) - is_eos.long()) > 0
    return (~eos_seen_before).long(), is_eos.any(-1)


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
) -> Generation:
    device = next(model.parameters()).device
    batch = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left").to(device)
    sequences = model.generate(
        **batch,
        do_sample=True,
        temperature=temperature,
        top_p=top_p,
        top_k=0,
        max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    response_ids = sequences[:, batch["input_ids"].shape[1] :]
    response_mask, ended = mask_after_eos(response_ids, tokenizer.eos_token_id)
    response_ids = response_ids.masked_fill(response_mask == 0, tokenizer.pad_token_id)
    texts = [t.strip() for t in tokenizer.batch_decode(response_ids, skip_special_tokens=True)]
    return Generation(batch["input_ids"], batch["attention_mask"], response_ids, response_mask, ended, texts)


def sample_categorical(logprobs: torch.Tensor) -> torch.Tensor:
    """One draw per row by inverting the CDF: one uniform per row, where torch.multinomial
    draws an exponential per vocabulary entry (a tenth of the sampling loop on CPU).  (B, V) -> (B,)"""
    cdf = logprobs.exp().cumsum(-1)
    draw = torch.rand(len(cdf), 1, device=cdf.device, dtype=cdf.dtype) * cdf[:, -1:]
    return torch.searchsorted(cdf, draw, right=True).squeeze(-1).clamp(max=cdf.shape[-1] - 1)


@torch.no_grad()
def sample_with_logprobs(
    model: PreTrainedModel,
    query_ids: torch.Tensor,
    query_mask: torch.Tensor,
    max_new_tokens: int,
    temperature: float,
    eos_token_id: int,
    pad_token_id: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ancestral sampling with a KV cache that keeps log pi(a_t | s_t) of each sampled token.

    PPO needs those log-probs; taking them here saves the policy forward pass that would
    recompute them (they agree with a full forward to float rounding; tested).
    Returns (response_ids, response_mask, ended, logprobs): (B, T), (B, T), (B,), (B, T).
    """
    attention_mask = query_mask
    positions = position_ids_from_mask(query_mask)
    output = model(
        input_ids=query_ids, attention_mask=attention_mask, position_ids=positions, use_cache=True, logits_to_keep=1
    )
    next_position = positions[:, -1:] + 1
    finished = torch.zeros(len(query_ids), dtype=torch.bool, device=query_ids.device)
    tokens, logprobs = [], []
    for _ in range(max_new_tokens):
        step_logprobs = torch.log_softmax(output.logits[:, -1].float() / temperature, dim=-1)  # (B, V)
        token = sample_categorical(step_logprobs)
        token = token.masked_fill(finished, pad_token_id)
        tokens.append(token)
        logprobs.append(step_logprobs.gather(-1, token[:, None]).squeeze(-1))
        finished |= token == eos_token_id
        if finished.all():
            break
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(token), 1)], dim=1)
        output = model(
            input_ids=token[:, None],
            attention_mask=attention_mask,
            position_ids=next_position,
            cache=output.cache,
            use_cache=True,
        )
        next_position = next_position + 1
    response_ids = torch.stack(tokens, dim=1)
    response_mask, ended = mask_after_eos(response_ids, eos_token_id)
    response_ids = response_ids.masked_fill(response_mask == 0, pad_token_id)
    return response_ids, response_mask, ended, torch.stack(logprobs, dim=1) * response_mask


def sample_k(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: pd.DataFrame,
    k: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    batch_size: int,
    policy_checkpoint: str,
    progress=None,
) -> pd.DataFrame:
    """K sampled responses for every prompt, as rows keyed by content (see RESPONSE_COLUMNS)."""
    sampling = json.dumps(
        {"k": k, "max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p}, sort_keys=True
    )
    jobs = [(row.prompt_id, row.prompt, i) for row in prompts.itertuples() for i in range(k)]
    rows = []
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        generation = generate(model, tokenizer, [p for _, p, _ in chunk], max_new_tokens, temperature, top_p)
        for (prompt_id, _, index), text in zip(chunk, generation.texts):
            response_id = content_id(prompt_id, policy_checkpoint, index, text)
            rows.append((response_id, prompt_id, index, text, policy_checkpoint, sampling))
        if progress:
            progress(min(start + batch_size, len(jobs)), len(jobs))
    return pd.DataFrame(rows, columns=RESPONSE_COLUMNS)

"""Batched generation: K responses per prompt, left-padded, KV cache, stop at the turn's end.

A response stops at the first of the policy's stop tokens (rlhf.chat.stop_token_ids: the
tokenizer's EOS, the model's generation_config.eos_token_id, the chat template's turn end), which
stays in the response; everything after it is padding. Below, "EOS" means any stop token. Every
sampler draws from exactly softmax(logits / temperature) (or its nucleus, for sample_k with top_p),
never through the model's own generation config.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase, StaticCache

from rlhf import chat
from rlhf.frames import RESPONSE_COLUMNS
from rlhf.pretrained import position_ids_from_mask
from rlhf.text import content_id

# response: the text (rlhf.chat.transcript of its turns); messages: its chat turns as JSON;
# rendered_prompt: the exact text the policy continued (its chat template's rendering; None if imported).


@dataclass
class Generation:
    query_ids: torch.Tensor  # (B, Q) prompt tokens, left-padded
    query_mask: torch.Tensor  # (B, Q) 1 on prompt tokens
    response_ids: torch.Tensor  # (B, R) sampled tokens; pad after the first EOS
    response_mask: torch.Tensor  # (B, R) 1 up to and including the first EOS
    ended: torch.Tensor  # (B,) True where the response emitted EOS
    texts: list[str]  # (B,) decoded responses, special tokens dropped


StopIds = int | Sequence[int]  # one stop token id or several (rlhf.chat.stop_token_ids)


def is_stop(tokens: torch.Tensor, stop_ids: StopIds) -> torch.Tensor:
    """Where `tokens` hold any of the stop ids (bool, the shape of `tokens`)."""
    stops = [stop_ids] if isinstance(stop_ids, int) else list(stop_ids)
    return torch.isin(tokens, torch.tensor(stops, dtype=tokens.dtype, device=tokens.device))


def mask_after_eos(response_ids: torch.Tensor, eos_token_id: StopIds) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask, ended): mask keeps tokens up to and including the first stop token (any of
    `eos_token_id`, an id or a list of them).  (B, R), (B,)"""
    is_eos = is_stop(response_ids, eos_token_id)
    eos_seen_before = (is_eos.cumsum(-1) - is_eos.long()) > 0
    return (~eos_seen_before).long(), is_eos.any(-1)


def prompt_batch(tokenizer: PreTrainedTokenizerBase, texts: list[str], device: torch.device) -> dict:
    """Rendered prompts (rlhf.chat.render_prompt) as a left-padded batch for the policy to continue;
    special tokens only where no chat template wrote them.  input_ids, attention_mask: (B, Q)"""
    return tokenizer(
        texts,
        return_tensors="pt",
        padding=True,
        padding_side="left",
        add_special_tokens=chat.add_special_tokens_for(tokenizer),
    ).to(device)


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
) -> Generation:
    """Responses through `model.generate`, which also applies the model's own generation config
    (repetition penalty, top-k, ...): for a user's own calls; the stages use `sample_from_policy`."""
    device = next(model.parameters()).device
    batch = prompt_batch(tokenizer, prompts, device)
    stop_ids = chat.stop_token_ids(tokenizer, model)
    sequences = model.generate(
        **batch,
        do_sample=True,
        temperature=temperature,
        top_p=top_p,
        top_k=0,
        max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=stop_ids,
    )
    response_ids = sequences[:, batch["input_ids"].shape[1] :]
    response_mask, ended = mask_after_eos(response_ids, stop_ids)
    response_ids = response_ids.masked_fill(response_mask == 0, tokenizer.pad_token_id)
    texts = [t.strip() for t in tokenizer.batch_decode(response_ids, skip_special_tokens=True)]
    return Generation(batch["input_ids"], batch["attention_mask"], response_ids, response_mask, ended, texts)


@torch.no_grad()
def sample_from_policy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    max_new_tokens: int,
    temperature: float,
    top_p: float = 1.0,
    multinomial: bool = False,
    generator: torch.Generator | None = None,
) -> Generation:
    """Responses drawn from exactly softmax(logits / temperature), as PPO's sampler draws them
    (with top_p < 1, from its nucleus: `sample_token`), stopping at any of the policy's stop ids.

    `generate` reads the model's own generation config, so a user's model that ships a repetition
    penalty or top-k would be sampled from another distribution than the one PPO trains and KL is
    measured under; evaluation and sample_k use this instead. `prompts` are rendered texts (rlhf.chat)."""
    device = next(model.parameters()).device
    batch = prompt_batch(tokenizer, prompts, device)
    response_ids, response_mask, ended, _ = sample_with_logprobs(
        model,
        batch["input_ids"],
        batch["attention_mask"],
        max_new_tokens,
        temperature,
        chat.stop_token_ids(tokenizer, model),
        tokenizer.pad_token_id,
        top_p=top_p,
        multinomial=multinomial,
        generator=generator,
    )
    texts = [t.strip() for t in tokenizer.batch_decode(response_ids, skip_special_tokens=True)]
    return Generation(batch["input_ids"], batch["attention_mask"], response_ids, response_mask, ended, texts)


def drawing_from(generator: torch.Generator | None) -> dict:
    """torch's `generator=` argument, only when there is one: torch.compile's tracing of a draw
    given generator=None fails on symbolic sizes (the compiled sampler's batch)."""
    return {"generator": generator} if generator is not None else {}


def sample_categorical(logprobs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw per row by inverting the CDF: one uniform per row, where torch.multinomial
    draws an exponential per vocabulary entry (a tenth of the sampling loop on CPU).  (B, V) -> (B,)"""
    cdf = logprobs.exp().cumsum(-1)
    draw = torch.rand(len(cdf), 1, device=cdf.device, dtype=cdf.dtype, **drawing_from(generator)) * cdf[:, -1:]
    return torch.searchsorted(cdf, draw, right=True).squeeze(-1).clamp(max=cdf.shape[-1] - 1)


def nucleus(logprobs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Log-probs renormalised over the nucleus (Holtzman et al. 2020): the most probable tokens
    whose mass first reaches top_p (the most probable always kept); the rest -inf.  (B, V) -> (B, V)"""
    sorted_logprobs, order = logprobs.sort(dim=-1, descending=True)
    mass_before = sorted_logprobs.exp().cumsum(-1) - sorted_logprobs.exp()  # mass of the tokens ranked above
    drop = (mass_before >= top_p).scatter(-1, order, mass_before >= top_p)
    return torch.log_softmax(logprobs.masked_fill(drop, float("-inf")), dim=-1)


def sample_token(
    logits: torch.Tensor,
    temperature: float,
    top_p: float = 1.0,
    multinomial: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(token, log pi(token)) drawn from the last position's logits at `temperature` (and from
    their nucleus when top_p < 1; the log-prob is then the nucleus's).  (B, V) -> (B,), (B,)

    multinomial: draw with torch.multinomial, as transformers' `generate` does, instead of the
    inverse CDF (the same distribution, other random numbers): for a seed, the same draws as
    `generate` gave, so a dataset sampled before this sampler replaced `generate` stays the same.
    generator: the random stream to draw from (default: torch's global one)."""
    step_logprobs = torch.log_softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        step_logprobs = nucleus(step_logprobs, top_p)
    if multinomial:  # softmax of the scaled logits itself, as generate computes its probabilities
        probs = step_logprobs.exp() if top_p < 1.0 else torch.softmax(logits.float() / temperature, dim=-1)
        token = torch.multinomial(probs, num_samples=1, **drawing_from(generator)).squeeze(-1)
    else:
        token = sample_categorical(step_logprobs, generator)
    return token, step_logprobs.gather(-1, token[:, None]).squeeze(-1)


def finish_responses(
    tokens: list[torch.Tensor], logprobs: list[torch.Tensor], eos_token_id: StopIds, pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The per-step draws as (response_ids, response_mask, ended, logprobs), padded after the first stop token."""
    response_ids = torch.stack(tokens, dim=1)
    response_mask, ended = mask_after_eos(response_ids, eos_token_id)
    response_ids = response_ids.masked_fill(response_mask == 0, pad_token_id)
    return response_ids, response_mask, ended, torch.stack(logprobs, dim=1) * response_mask


@torch.no_grad()
def sample_with_logprobs(
    model: PreTrainedModel,
    query_ids: torch.Tensor,
    query_mask: torch.Tensor,
    max_new_tokens: int,
    temperature: float,
    eos_token_id: StopIds,
    pad_token_id: int,
    top_p: float = 1.0,
    multinomial: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ancestral sampling with a KV cache that keeps log pi(a_t | s_t) of each sampled token,
    stopping a row at the first of `eos_token_id` (one stop id or a list: rlhf.chat.stop_token_ids).

    PPO needs those log-probs; taking them here saves the policy forward pass that would
    recompute them. They are the same quantity as a full forward's, computed another way: in
    fp32 on CPU they agree closely (tested), under bf16 the cached and the full forward may
    round differently by more (update_logprob_drift measures it).
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
        token, logprob = sample_token(output.logits[:, -1], temperature, top_p, multinomial, generator)
        token = token.masked_fill(finished, pad_token_id)
        tokens.append(token)
        logprobs.append(logprob)
        finished |= is_stop(token, eos_token_id)
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
    return finish_responses(tokens, logprobs, eos_token_id, pad_token_id)


class CompiledSampler:
    """`sample_with_logprobs` with a preallocated KV cache and a decode step compiled once.

    Why: on a GPU the eager decode step is bound by launching a few hundred small kernels from
    Python, not by memory (1 % of an H100's bandwidth at 152M parameters and batch 64). With a
    static cache (transformers' StaticCache) every step has the same shapes, so
    torch.compile(mode="reduce-overhead") can replay the whole step, forward and draw, as one CUDA
    graph. The compile is paid once per sampler (tens of seconds), so the sampler lives as long as
    the training run; prompts are left-padded to a multiple of PROMPT_BUCKET tokens so a new batch
    seldom means a new shape. The prefill stays eager, as transformers advises for static caches.
    Draws come from the same distribution as the eager loop's, not the same random numbers.
    """

    PROMPT_BUCKET = 32
    CHECK_EVERY = 8  # decode steps between "has every row ended?" checks: each check waits for the device

    def __init__(self, model: PreTrainedModel):
        self.model = model
        self.cache: StaticCache | None = None
        self.cache_shape: tuple[int, int] | None = None  # (batch, prompt bucket + response tokens)
        self.compiled_step = torch.compile(self._decode_step, mode="reduce-overhead", fullgraph=True)

    def _decode_step(self, token, attention_mask, positions, temperature):
        output = self.model(
            input_ids=token[:, None],
            attention_mask=attention_mask,
            position_ids=positions,
            cache=self.cache,
            use_cache=True,
        )
        return sample_token(output.logits[:, -1], temperature)

    def _cache_for(self, batch: int, length: int) -> StaticCache:
        if self.cache is None or self.cache_shape != (batch, length):
            self.cache, self.cache_shape = StaticCache(config=self.model.config, max_cache_len=length), (batch, length)
        else:
            self.cache.reset()  # same buffers: the captured graph keeps pointing at them
        return self.cache

    @torch.no_grad()
    def __call__(
        self,
        query_ids: torch.Tensor,
        query_mask: torch.Tensor,
        max_new_tokens: int,
        temperature: float,
        eos_token_id: StopIds,
        pad_token_id: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        batch, prompt_length = query_ids.shape
        padded_length = -(-prompt_length // self.PROMPT_BUCKET) * self.PROMPT_BUCKET
        query_ids = F.pad(query_ids, (padded_length - prompt_length, 0), value=pad_token_id)
        query_mask = F.pad(query_mask, (padded_length - prompt_length, 0), value=0)
        cache = self._cache_for(batch, padded_length + max_new_tokens)
        attention_mask = F.pad(query_mask, (0, max_new_tokens), value=0)  # slots fill as tokens are drawn
        positions = position_ids_from_mask(query_mask)
        output = self.model(
            input_ids=query_ids,
            attention_mask=attention_mask,
            position_ids=positions,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        token, logprob = sample_token(output.logits[:, -1], temperature)
        next_position = positions[:, -1:] + 1
        finished = torch.zeros(batch, dtype=torch.bool, device=query_ids.device)
        tokens, logprobs = [], []
        for step in range(max_new_tokens):
            if step:
                attention_mask[:, padded_length + step - 1] = 1
                token, logprob = self.compiled_step(tokens[-1], attention_mask, next_position, temperature)
                token, logprob = token.clone(), logprob.clone()  # the next replay overwrites the graph's outputs
                next_position = next_position + 1
            token = token.masked_fill(finished, pad_token_id)
            tokens.append(token)
            logprobs.append(logprob)
            finished |= is_stop(token, eos_token_id)
            if step % self.CHECK_EVERY == self.CHECK_EVERY - 1 and finished.all():
                break
        response_ids, response_mask, ended, logprobs = finish_responses(tokens, logprobs, eos_token_id, pad_token_id)
        length = max(int(response_mask.sum(-1).max()), 1)  # the eager loop's shape: it stops at the last EOS
        return response_ids[:, :length], response_mask[:, :length], ended, logprobs[:, :length]


def batch_generator(seed: int, batch_index: int, device: torch.device | str = "cpu", *purpose: int) -> torch.Generator:
    """The random stream of one batch: seeded from (seed, batch_index, *purpose) through NumPy's
    SeedSequence, which spreads related seeds into independent streams (O'Neill 2015, PCG). A batch
    draws the same numbers in whichever process or order it runs, so sharded sampling gives
    exactly the responses of one process. `purpose` tells apart streams of one batch number (the
    evaluation's start and trained policies: 1 and 2); sample_k's have none."""
    state = np.random.SeedSequence([seed, batch_index, *purpose]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator(device=device).manual_seed(int(state) & (2**63 - 1))


@dataclass
class ResponseSampler:
    """K sampled responses for every prompt, in batches that can run anywhere (rows keyed by
    content: RESPONSE_COLUMNS).

    Drawn as `sample_from_policy` draws them: from exactly softmax(logits / temperature), or its
    nucleus when top_p < 1, never through the model's own generation config (a repetition penalty or
    top-k it ships would change the distribution without a trace). The `sampling` column records
    all of it: the sampler, k, max_new_tokens, temperature, top_p and the stop token ids.
    Batch i holds responses [i * batch_size, (i + 1) * batch_size) of the prompts' order, K per
    prompt, and draws from batch_generator(seed, i)."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    prompts: pd.DataFrame
    k: int
    max_new_tokens: int
    temperature: float
    top_p: float
    batch_size: int
    policy_checkpoint: str
    seed: int

    def __post_init__(self) -> None:
        self.stop_ids = chat.stop_token_ids(self.tokenizer, self.model)
        self.sampling = json.dumps(
            {
                "sampler": "softmax(logits/temperature)" + (", nucleus top_p" if self.top_p < 1.0 else ""),
                "k": self.k,
                "max_new_tokens": self.max_new_tokens,
                "temperature": self.temperature,
                "top_p": self.top_p,
                "stop_token_ids": self.stop_ids,
            },
            sort_keys=True,
        )
        # Each prompt is rendered with the policy's own chat template (rlhf.chat), once.
        self.rendered = {
            prompt_id: chat.render_prompt(self.tokenizer, conversation)
            for prompt_id, conversation in zip(self.prompts["prompt_id"], chat.conversations_of(self.prompts))
        }
        jobs = [(prompt_id, i) for prompt_id in self.prompts["prompt_id"] for i in range(self.k)]
        self.batches = [jobs[start : start + self.batch_size] for start in range(0, len(jobs), self.batch_size)]

    def sample_batch(self, index: int) -> pd.DataFrame:
        chunk = self.batches[index]
        texts = [self.rendered[prompt_id] for prompt_id, _ in chunk]
        device = next(self.model.parameters()).device
        # torch.multinomial, as generate drew, from the batch's own stream
        generation = sample_from_policy(
            self.model,
            self.tokenizer,
            texts,
            self.max_new_tokens,
            self.temperature,
            self.top_p,
            multinomial=True,
            generator=batch_generator(self.seed, index, device),
        )
        rows = []
        for (prompt_id, response_index), text in zip(chunk, generation.texts):
            response_id = content_id(prompt_id, self.policy_checkpoint, response_index, text)
            turns = chat.to_json(chat.assistant_turns(text))
            rendered = self.rendered[prompt_id]
            rows.append(
                (response_id, prompt_id, response_index, text, turns, rendered, self.policy_checkpoint, self.sampling)
            )
        return pd.DataFrame(rows, columns=RESPONSE_COLUMNS)


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
    seed: int = 0,
    progress=None,
) -> pd.DataFrame:
    """Every batch of a ResponseSampler in one process, in order."""
    sampler = ResponseSampler(
        model, tokenizer, prompts, k, max_new_tokens, temperature, top_p, batch_size, policy_checkpoint, seed
    )
    frames = []
    for index in range(len(sampler.batches)):
        frames.append(sampler.sample_batch(index))
        if progress:
            progress(index + 1, len(sampler.batches))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=RESPONSE_COLUMNS)

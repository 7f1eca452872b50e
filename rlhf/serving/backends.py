"""Where the policy server's answers come from: a checkpoint loaded here, or an OpenAI-compatible
server already running (vLLM, TGI, Ollama, a hosted API) that the policy server stands in front of.

A local checkpoint answers as the pipeline samples it: the conversation rendered by the policy's own
chat template (rlhf.chat.render_prompt, as sample_responses renders it), drawn from exactly
softmax(logits / temperature) or its nucleus (rlhf.sampling.sample_from_policy, as evaluation draws),
stopping at the policy's stop tokens. One generation runs at a time (CPU threads are shared; a GPU
server wants vLLM behind --upstream). Temperature 0 (greedy, in OpenAI's API) is drawn at
GREEDY_TEMPERATURE, which puts all but a vanishing mass on the most probable token.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from rlhf import chat
from rlhf.errors import InputError

GREEDY_TEMPERATURE = 1e-4


@dataclass(frozen=True)
class Sampling:
    """What a client asked for (OpenAI's chat-completions fields of the same names)."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 128
    n: int = 1


@dataclass
class Completion:
    answers: list[str]  # (n,) the answers' texts
    finish_reasons: list[str]  # (n,) stop (the turn ended) or length (max_tokens reached)
    model: str
    policy_checkpoint: str  # content hash of the checkpoint, or upstream:<url>#<model>
    sampling: dict  # the parameters as drawn, recorded with the exchange
    rendered_prompt: str | None = None  # the text the policy continued (None behind an upstream)
    usage: dict = field(default_factory=dict)


class BackendError(Exception):
    """The backend could not answer (an upstream down or refusing): a 502 naming why."""


class LocalPolicy:
    """A policy checkpoint directory (a hub id works too, where the hub is reachable)."""

    def __init__(self, checkpoint: str | Path, device: str = "auto"):
        from rlhf.pretrained import checkpoint_hash, load_policy, load_tokenizer, resolve_device

        self.tokenizer = load_tokenizer(checkpoint)
        self.model = load_policy(checkpoint, resolve_device(device)).eval().requires_grad_(False)
        self.name = Path(checkpoint).name
        self.checkpoint = checkpoint_hash(checkpoint) if Path(checkpoint).is_dir() else str(checkpoint)
        self.stop_ids = chat.stop_token_ids(self.tokenizer, self.model)
        self.context = self.tokenizer.model_max_length
        self.lock = threading.Lock()

    def complete(
        self, conversation: chat.Conversation, sampling: Sampling, requested_model: str | None = None
    ) -> Completion:
        from rlhf.sampling import sample_from_policy

        rendered = chat.render_prompt(self.tokenizer, conversation)
        prompt_tokens = len(
            self.tokenizer(rendered, add_special_tokens=chat.add_special_tokens_for(self.tokenizer))["input_ids"]
        )
        if prompt_tokens + sampling.max_tokens > self.context:
            raise InputError(
                f"messages: {prompt_tokens} tokens and max_tokens {sampling.max_tokens} are over the model's "
                f"context of {self.context} tokens"
            )
        temperature = max(sampling.temperature, GREEDY_TEMPERATURE)
        with self.lock:
            generation = sample_from_policy(
                self.model, self.tokenizer, [rendered] * sampling.n, sampling.max_tokens, temperature, sampling.top_p
            )
        lengths = generation.response_mask.sum(-1).tolist()
        drawn = {
            "sampler": "softmax(logits/temperature)" + (", nucleus top_p" if sampling.top_p < 1.0 else ""),
            "temperature": sampling.temperature,
            "drawn_at_temperature": temperature,
            "top_p": sampling.top_p,
            "max_tokens": sampling.max_tokens,
            "n": sampling.n,
            "stop_token_ids": self.stop_ids,
        }
        return Completion(
            answers=generation.texts,
            finish_reasons=["stop" if ended else "length" for ended in generation.ended.tolist()],
            model=self.name,
            policy_checkpoint=self.checkpoint,
            sampling=drawn,
            rendered_prompt=rendered,
            usage={
                "prompt_tokens": prompt_tokens,
                "completion_tokens": int(sum(lengths)),
                "total_tokens": prompt_tokens + int(sum(lengths)),
            },
        )


class Upstream:
    """An OpenAI-compatible server's POST {url}/chat/completions. `model`: the name to ask it for
    (None: the client's own). `api_key`: sent as its bearer token (the client's token is ours, never
    passed on)."""

    def __init__(self, url: str, model: str | None = None, api_key: str | None = None, timeout_s: float = 120.0):
        self.url = url.rstrip("/")
        self.model = model
        self.name = model or "upstream"
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s)

    def complete(
        self, conversation: chat.Conversation, sampling: Sampling, requested_model: str | None = None
    ) -> Completion:
        asked = {
            "model": self.model or requested_model or "default",
            "messages": conversation,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": sampling.max_tokens,
            "n": sampling.n,
        }
        try:
            answer = self.client.post("/chat/completions", json=asked)
        except httpx.HTTPError as error:
            raise BackendError(f"upstream {self.url}: {type(error).__name__}: {error}") from None
        if answer.status_code != 200:
            raise BackendError(f"upstream {self.url} answered {answer.status_code}: {answer.text[:200]}")
        try:
            body = answer.json()
            choices = sorted(body["choices"], key=lambda c: c.get("index", 0))
            texts = [c["message"]["content"] or "" for c in choices]
        except (ValueError, KeyError, TypeError) as error:
            raise BackendError(
                f"upstream {self.url}: not a chat completion ({type(error).__name__}: {error})"
            ) from None
        if len(texts) != sampling.n:
            raise BackendError(f"upstream {self.url}: asked for {sampling.n} answers, got {len(texts)}")
        model = str(body.get("model") or asked["model"])
        return Completion(
            answers=texts,
            finish_reasons=[c.get("finish_reason") or "stop" for c in choices],
            model=model,
            policy_checkpoint=f"upstream:{self.url}#{model}",
            sampling={**{k: asked[k] for k in ("temperature", "top_p", "max_tokens", "n")}, "upstream": self.url},
            usage=body.get("usage") or {},
        )

    def close(self) -> None:
        self.client.close()


def sampling_json(completion: Completion) -> str:
    return json.dumps(completion.sampling, sort_keys=True)

"""Where the policy server's answers come from: a checkpoint loaded here, or an OpenAI-compatible
server already running (vLLM, TGI, Ollama, a hosted API) that the policy server stands in front of.

A local checkpoint answers as the pipeline samples it: the conversation rendered by the policy's own
chat template (rlhf.chat.render_prompt, as sample_responses renders it), drawn from exactly
softmax(logits / temperature) or its nucleus (rlhf.sampling.sample_from_policy, as evaluation draws),
stopping at the policy's stop tokens. One batch runs at a time: the requests that wait meanwhile
and are drawn alike (max_tokens, temperature, top_p) go together in the next batch, left-padded as
sample_responses batches them, so sixteen clients cost about one batch each round, not sixteen
generations (a GPU server under heavy load still wants vLLM's continuous batching, behind
--upstream). Temperature 0 (greedy, in OpenAI's API) is drawn at GREEDY_TEMPERATURE, which puts all
but a vanishing mass on the most probable token.
"""

from __future__ import annotations

import copy
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


@dataclass
class Waiting:
    """A request waiting for the model; whichever request's thread runs the batch that takes it fills it in."""

    rendered: str  # the text the policy continues
    n: int  # answers wanted
    key: tuple[int, float, float]  # (max_tokens, temperature drawn at, top_p): requests drawn alike share a batch
    texts: list[str] | None = None  # (n,)
    ended: list[bool] | None = None  # (n,) the turn ended before max_tokens
    lengths: list[int] | None = None  # (n,) tokens drawn
    error: BaseException | None = None


class LocalPolicy:
    """A policy checkpoint directory (a hub id works too, where the hub is reachable). `max_batch`:
    the most sequences one batch draws."""

    def __init__(self, checkpoint: str | Path, device: str = "auto", max_batch: int = 32):
        from rlhf.pretrained import checkpoint_hash, load_policy, load_tokenizer, resolve_device

        self.tokenizer = load_tokenizer(checkpoint)
        self.model = load_policy(checkpoint, resolve_device(device)).eval().requires_grad_(False)
        self.name = Path(checkpoint).name
        self.checkpoint = checkpoint_hash(checkpoint) if Path(checkpoint).is_dir() else str(checkpoint)
        self.stop_ids = chat.stop_token_ids(self.tokenizer, self.model)
        self.context = self.tokenizer.model_max_length
        # A fast tokenizer's padding settings are state of one Rust object, which a batch sets and
        # unsets while it encodes: a request counting its prompt's tokens on the same object at that
        # moment broke a batch ("Unable to create tensor"). Requests render and count on a copy.
        self.request_tokenizer = copy.deepcopy(self.tokenizer)
        self.request_lock = threading.Lock()
        self.max_batch = max_batch
        self.lock = threading.Lock()  # held by the thread whose batch runs
        self.queue_lock = threading.Lock()
        self.waiting: list[Waiting] = []
        self.batches = 0  # batches drawn so far

    def generate(self, waiting: Waiting) -> Waiting:
        """`waiting` filled in: by a batch another request's thread ran while this one waited for the
        model, or by the batches this thread runs once it holds the model, oldest requests first."""
        with self.queue_lock:
            self.waiting.append(waiting)
        with self.lock:
            while waiting.texts is None and waiting.error is None:
                self._run_batch(waiting.key)
        if waiting.error is not None:
            raise waiting.error
        return waiting

    def _run_batch(self, key: tuple[int, float, float]) -> None:
        from rlhf.sampling import sample_from_policy

        with self.queue_lock:
            batch, size = [], 0
            for waiting in list(self.waiting):
                if waiting.key == key and (not batch or size + waiting.n <= self.max_batch):
                    batch.append(waiting)
                    size += waiting.n
                    self.waiting.remove(waiting)
        self.batches += 1
        max_tokens, temperature, top_p = key
        prompts = [waiting.rendered for waiting in batch for _ in range(waiting.n)]
        try:
            generation = sample_from_policy(self.model, self.tokenizer, prompts, max_tokens, temperature, top_p)
        except Exception as error:
            for waiting in batch:
                waiting.error = error
            return
        ended, lengths = generation.ended.tolist(), generation.response_mask.sum(-1).tolist()
        start = 0
        for waiting in batch:
            rows = slice(start, start + waiting.n)
            waiting.texts, waiting.ended, waiting.lengths = generation.texts[rows], ended[rows], lengths[rows]
            start += waiting.n

    def complete(
        self, conversation: chat.Conversation, sampling: Sampling, requested_model: str | None = None
    ) -> Completion:
        with self.request_lock:
            rendered = chat.render_prompt(self.request_tokenizer, conversation)
            special = chat.add_special_tokens_for(self.request_tokenizer)
            prompt_tokens = len(self.request_tokenizer(rendered, add_special_tokens=special)["input_ids"])
        if prompt_tokens + sampling.max_tokens > self.context:
            raise InputError(
                f"messages: {prompt_tokens} tokens and max_tokens {sampling.max_tokens} are over the model's "
                f"context of {self.context} tokens"
            )
        temperature = max(sampling.temperature, GREEDY_TEMPERATURE)
        drawn_alike = (sampling.max_tokens, temperature, sampling.top_p)
        generation = self.generate(Waiting(rendered, sampling.n, drawn_alike))
        lengths = generation.lengths
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
            finish_reasons=["stop" if ended else "length" for ended in generation.ended],
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
    passed on, and the key never reaches our clients: an upstream's error text is scrubbed of it).
    A server that answers fewer choices than asked (TGI takes no `n`) is asked again for the rest."""

    def __init__(self, url: str, model: str | None = None, api_key: str | None = None, timeout_s: float = 120.0):
        if not url.startswith(("http://", "https://")):
            raise InputError(f"--upstream {url}: expected an http:// or https:// URL (e.g. http://127.0.0.1:8000/v1)")
        self.url = url.rstrip("/")
        self.model = model
        self.name = model or "upstream"
        self.api_key = api_key
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
        }
        choices, usage, model = [], {}, asked["model"]
        for _ in range(sampling.n):  # each answer holds at least one choice, so n asks at most
            body = self._ask({**asked, "n": sampling.n - len(choices)})
            choices += sorted(body["choices"], key=lambda c: c.get("index", 0))[: sampling.n - len(choices)]
            model = str(body.get("model") or model)
            for key, value in (body.get("usage") or {}).items():
                if isinstance(value, int):
                    usage[key] = usage.get(key, 0) + value
            if len(choices) == sampling.n:
                break
        return Completion(
            answers=[c["message"]["content"] or "" for c in choices],
            finish_reasons=[c.get("finish_reason") or "stop" for c in choices],
            model=model,
            policy_checkpoint=f"upstream:{self.url}#{model}",
            sampling={
                **{k: asked[k] for k in ("temperature", "top_p", "max_tokens")},
                "n": sampling.n,
                "upstream": self.url,
            },
            usage=usage,
        )

    def _ask(self, asked: dict) -> dict:
        """One chat completion with at least one choice, or BackendError naming why not (one line)."""
        try:
            answer = self.client.post("/chat/completions", json=asked)
        except httpx.HTTPError as error:
            raise BackendError(self._scrubbed(f"upstream {self.url}: {type(error).__name__}: {error}")) from None
        if answer.status_code != 200:
            raise BackendError(
                self._scrubbed(f"upstream {self.url} answered {answer.status_code}: {answer.text[:200]}")
            )
        try:
            body = answer.json()
            if not body["choices"] or not all(isinstance(c["message"]["content"], str | None) for c in body["choices"]):
                raise ValueError("no choices, or one without a message's text")
        except (ValueError, KeyError, TypeError) as error:
            raise BackendError(
                f"upstream {self.url}: not a chat completion ({type(error).__name__}: {error})"
            ) from None
        return body

    def _scrubbed(self, text: str) -> str:
        text = " ".join(text.split())
        return text.replace(self.api_key, "<upstream key>") if self.api_key else text

    def close(self) -> None:
        self.client.close()


def sampling_json(completion: Completion) -> str:
    return json.dumps(completion.sampling, sort_keys=True)

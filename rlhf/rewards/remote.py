"""A reward server over HTTP, in OpenRLHF's remote reward-model JSON convention.

The convention (OpenRLHF, openrlhf/utils/remote_rm_utils.py `remote_rm_fn` and
openrlhf/cli/serve_rm.py): the trainer POSTs one JSON object to the server's URL (serve_rm's route
is /get_reward),
    {"query": [prompt + response, rendered as one text, ...], "prompts": [prompt text, ...],
     "labels": [...]}          (labels: references for verifiers, optional)
and reads the scores from the answer's "rewards" key, one float per query (serve_rm answers
{"rewards": [...], "scores": [...], "extra_logs": {...}}).

We send the same keys, so an OpenRLHF-style server (a verifier, someone else's RM) can score our
responses, and add two: "prompt_messages" (the prompts as chat messages) and "responses". A text
rendered with one model's template is not what another model was trained to read; with the
conversation itself, our own server renders each exchange with the reward model's own tokenizer,
as every in-process scorer does (rlhf.scoring), and servers that do not know these keys ignore
them. "query" is rendered with `tokenizer` (the policy's, as OpenRLHF's trainer renders it) or,
without one, in the plain format (rlhf.chat).

Failures: each request has a timeout and is retried with exponential backoff on timeouts,
connection errors, 429 (honouring Retry-After), 500/502/503/504 and 408/409/425: the statuses the
OpenAI-compatible judge retries (rlhf.judges.openai_compatible.RETRYABLE_STATUS). Any other status
fails at once; after the last try one RewardEndpointError (a JudgeEndpointError) names the URL.

Authentication: a server started with tokens (`rlhf serve reward --tokens FILE`; a token from
`rlhf serve reward-token NAME --tokens FILE`) wants `Authorization: Bearer <token>`. The client sends
the token in the environment variable RLHF_REWARD_TOKEN (the way the OpenAI judge reads its key: a
secret never goes in params.yaml, which is committed); a 401 fails at once in one line naming the
URL and whether a token was sent.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import torch
from transformers import PreTrainedTokenizerBase

from rlhf import chat
from rlhf.errors import JudgeEndpointError
from rlhf.judges.openai_compatible import RETRYABLE_STATUS

MAX_BACKOFF_S = 60.0
TOKEN_ENV = "RLHF_REWARD_TOKEN"
"""The environment variable holding the reward server's bearer token (module docstring)."""


class RewardEndpointError(JudgeEndpointError):
    """A reward server timed out, refused or kept failing after its retries, or answered nonsense."""


def request_body(
    conversations: list[chat.Conversation], responses: list[str], tokenizer: PreTrainedTokenizerBase | None = None
) -> dict:
    """One batch in OpenRLHF's request convention, plus the conversations themselves (module docstring).

    tokenizer None renders the plain format: rlhf.chat sees no chat template on it."""
    return {
        "query": [chat.render_exchange(tokenizer, c, r) for c, r in zip(conversations, responses)],
        "prompts": [chat.render_prompt(tokenizer, c) for c in conversations],
        "prompt_messages": conversations,
        "responses": list(responses),
    }


def rewards_from(answer: dict, expected: int, url: str) -> list[float]:
    """The "rewards" of a server's answer, refusing one of the wrong length or type."""
    rewards = answer.get("rewards") if isinstance(answer, dict) else None
    if not isinstance(rewards, list) or len(rewards) != expected:
        raise RewardEndpointError(
            f"train_policy.reward: {url} answered without {expected} 'rewards': {str(answer)[:200]}"
        )
    try:
        return [float(r) for r in rewards]
    except (TypeError, ValueError):
        raise RewardEndpointError(
            f"train_policy.reward: {url} answered non-numeric rewards: {str(rewards)[:200]}"
        ) from None


def backoff(attempt: int, base_s: float) -> float:
    """Exponential backoff, capped: base, 2 base, 4 base, ... <= 60 s."""
    return min(base_s * 2**attempt, MAX_BACKOFF_S)


def retry_after(response: httpx.Response, base_s: float) -> float:
    """A 429's Retry-After in seconds where it gives one (capped), else the first backoff."""
    try:
        return min(float(response.headers["retry-after"]), MAX_BACKOFF_S)
    except (KeyError, ValueError):
        return backoff(0, base_s)


def detail_of(response: httpx.Response) -> str:
    """The one-line "detail" of a refusal (our servers' and FastAPI's), else the start of its text."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    return (detail if isinstance(detail, str) else response.text)[:100].replace("\n", " ")


def post_with_retries(client: httpx.Client, url: str, body: dict, max_retries: int, backoff_s: float) -> dict:
    """POST `body` as JSON; retry what may pass (timeouts, connection errors, 429, 5xx) up to
    max_retries times; the JSON answer of the first 200, else one RewardEndpointError."""
    reason = ""
    for attempt in range(max_retries + 1):
        try:
            response = client.post(url, json=body)
        except httpx.TransportError as error:  # timeouts, refused and dropped connections
            reason = type(error).__name__
            if attempt < max_retries:
                time.sleep(backoff(attempt, backoff_s))
            continue
        if response.status_code == 200:
            try:
                return response.json()
            except ValueError:
                raise RewardEndpointError(
                    f"train_policy.reward: {url} answered 200 without JSON: {response.text[:200]}"
                ) from None
        if response.status_code == 401:
            sent = f"the token in {TOKEN_ENV}" if "authorization" in client.headers else f"no token ({TOKEN_ENV} unset)"
            raise RewardEndpointError(
                f"train_policy.reward: {url} answered HTTP 401 ({detail_of(response)}) to {sent}: set {TOKEN_ENV} "
                "to a token of `rlhf serve reward-token NAME --tokens FILE` for this server"
            )
        reason = f"HTTP {response.status_code}: {response.text[:200]}"
        if response.status_code not in RETRYABLE_STATUS:
            break  # a 4xx other than these will not pass on a retry
        if attempt < max_retries:
            time.sleep(retry_after(response, backoff_s) if response.status_code == 429 else backoff(attempt, backoff_s))
    raise RewardEndpointError(f"train_policy.reward: {url} did not answer after {attempt + 1} attempt(s): {reason}")


class RemoteReward:
    """Scores from a reward server (a RewardSource): batches of `batch_size` exchanges, up to
    `max_concurrency` requests in flight; `token` (default: $RLHF_REWARD_TOKEN) sent as a bearer token."""

    def __init__(
        self,
        url: str,
        tokenizer: PreTrainedTokenizerBase | None = None,
        timeout_s: float = 60.0,
        max_retries: int = 5,
        backoff_s: float = 1.0,
        batch_size: int = 64,
        max_concurrency: int = 4,
        token: str | None = None,
    ):
        self.url, self.tokenizer = url, tokenizer
        self.max_retries, self.backoff_s = max_retries, backoff_s
        self.batch_size, self.max_concurrency = batch_size, max_concurrency
        token = os.environ.get(TOKEN_ENV, "").strip() if token is None else token
        self._client = httpx.Client(timeout=timeout_s, headers={"Authorization": f"Bearer {token}"} if token else {})

    def __call__(self, prompts: list[chat.Conversation], responses: list[str]) -> torch.Tensor:
        conversations = [chat.as_conversation(prompt) for prompt in prompts]
        starts = range(0, len(responses), self.batch_size)
        batches = [(conversations[s : s + self.batch_size], responses[s : s + self.batch_size]) for s in starts]
        with ThreadPoolExecutor(max_workers=self.max_concurrency) as pool:
            scores = list(pool.map(lambda batch: self._score(*batch), batches))
        return torch.tensor([s for batch in scores for s in batch], dtype=torch.float32)

    def _score(self, conversations: list[chat.Conversation], responses: list[str]) -> list[float]:
        body = request_body(conversations, responses, self.tokenizer)
        answer = post_with_retries(self._client, self.url, body, self.max_retries, self.backoff_s)
        return rewards_from(answer, len(responses), self.url)

    def close(self) -> None:
        self._client.close()

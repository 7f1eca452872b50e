"""An AI judge behind any OpenAI-compatible chat endpoint: vLLM, TGI, Ollama, a hosted API.

The preference comes from the log-probabilities of the answer token where the server returns
them, else from the parsed answer (1.0 or 0.0; 0.5 when unreadable, counted). Requests run with
bounded concurrency; each has a timeout and is retried with exponential backoff on timeouts,
connection errors, 429 (honouring Retry-After) and 5xx. Tokens are counted from `usage` and
priced from params. The API key is read from the environment variable params name; it is sent
in the Authorization header only and is scrubbed from every error message.
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from rlhf.errors import JudgeEndpointError
from rlhf.judges.pairwise import CHOICE_CUE, RATIONALE_CUE, PairwiseJudge, comparison_text

RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class ChatCompletionsAPI:
    """POSTs to an OpenAI-compatible /chat/completions: bounded retries with exponential backoff
    (a 429's Retry-After wins), token usage and its price counted over threads, the API key sent
    in the Authorization header only and scrubbed from every error. `where` (the params key that
    configured it) starts each error message."""

    def __init__(
        self,
        base_url: str,
        where: str,
        api_key_env: str = "OPENAI_API_KEY",
        timeout_s: float = 30.0,
        max_retries: int = 5,
        backoff_s: float = 1.0,
        price_per_1k_prompt_tokens: float = 0.0,
        price_per_1k_completion_tokens: float = 0.0,
    ):
        self.url, self.where = base_url.rstrip("/") + "/chat/completions", where
        self.max_retries, self.backoff_s = max_retries, backoff_s
        self.prices = (price_per_1k_prompt_tokens, price_per_1k_completion_tokens)
        self._api_key = os.environ.get(api_key_env, "")
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        self._client = httpx.Client(timeout=timeout_s, headers=headers)
        self._lock = threading.Lock()
        self.usage = {"requests": 0, "retries": 0, "prompt_tokens": 0, "completion_tokens": 0, "unparsed": 0}

    @property
    def cost(self) -> float:
        return (self.usage["prompt_tokens"] * self.prices[0] + self.usage["completion_tokens"] * self.prices[1]) / 1000

    def complete(self, body: dict) -> dict:
        """The first choice of the answer to `body`, its tokens counted."""
        answer = self._post(body)
        choices = answer.get("choices") if isinstance(answer, dict) else None
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            # A proxy's page, an {"error": ...} sent with 200, an empty list: the URL is not a chat API.
            raise JudgeEndpointError(
                f"{self.where}: {self.url} answered 200 without a chat completion (no choices): "
                f"{self._scrub(json.dumps(answer))[:200]}"
            )
        usage = answer.get("usage") or {}
        with self._lock:
            self.usage["requests"] += 1
            self.usage["prompt_tokens"] += usage.get("prompt_tokens") or 0
            self.usage["completion_tokens"] += usage.get("completion_tokens") or 0
        return choices[0]

    def count_unparsed(self) -> None:
        with self._lock:
            self.usage["unparsed"] += 1

    def _post(self, body: dict) -> dict:
        reason = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                with self._lock:
                    self.usage["retries"] += 1
            try:
                response = self._client.post(self.url, json=body)
            except (httpx.UnsupportedProtocol, httpx.InvalidURL) as error:  # no retry mends the URL
                raise JudgeEndpointError(f"{self.where}.base_url: {self.url} is not an http(s) URL ({error})") from None
            except (httpx.TimeoutException, httpx.TransportError) as error:
                reason = f"{type(error).__name__}"
                time.sleep(self._backoff(attempt))
                continue
            if response.status_code == 200:
                try:
                    return response.json()
                except ValueError:
                    raise JudgeEndpointError(
                        f"{self.where}: {self.url} answered 200 with something other than JSON: "
                        f"{self._scrub(response.text)[:200]!r}"
                    ) from None
            reason = f"HTTP {response.status_code}: {self._scrub(response.text)[:200]}"
            if response.status_code not in RETRYABLE_STATUS:
                break
            time.sleep(self._retry_after(response) if response.status_code == 429 else self._backoff(attempt))
        raise JudgeEndpointError(f"{self.where}: {self.url} did not answer after {attempt + 1} attempt(s): {reason}")

    def _backoff(self, attempt: int) -> float:
        return min(self.backoff_s * 2**attempt, 60.0)

    def _retry_after(self, response: httpx.Response) -> float:
        try:
            return min(float(response.headers["retry-after"]), 60.0)
        except (KeyError, ValueError):
            return self._backoff(0)

    def _scrub(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text


class OpenAICompatibleJudge(PairwiseJudge):
    name = "openai"
    version = "1"

    def __init__(
        self,
        base_url: str,
        model: str,
        preamble: str,
        api_key_env: str = "OPENAI_API_KEY",
        max_concurrency: int = 8,
        timeout_s: float = 30.0,
        max_retries: int = 5,
        backoff_s: float = 1.0,
        chain_of_thought: bool = False,
        rationale_tokens: int = 256,
        price_per_1k_prompt_tokens: float = 0.0,
        price_per_1k_completion_tokens: float = 0.0,
    ):
        super().__init__()
        self.api = ChatCompletionsAPI(
            base_url,
            "rank_responses.openai",
            api_key_env,
            timeout_s,
            max_retries,
            backoff_s,
            price_per_1k_prompt_tokens,
            price_per_1k_completion_tokens,
        )
        self.model, self.preamble, self.chain_of_thought = model, preamble, chain_of_thought
        self.max_concurrency, self.rationale_tokens = max_concurrency, rationale_tokens

    @property
    def usage(self) -> dict:
        return self.api.usage

    @property
    def cost(self) -> float:
        return self.api.cost

    def first_preferred(self, queries: list[tuple[list[dict], str, str]]) -> list[float]:
        with ThreadPoolExecutor(max_workers=self.max_concurrency) as pool:
            return list(pool.map(self._ask, queries))

    def _ask(self, query: tuple[list[dict], str, str]) -> float:
        conversation, first, second = query
        cue = (
            (RATIONALE_CUE + " ... then end with the line:\n" + CHOICE_CUE + " <1 or 2>")
            if self.chain_of_thought
            else CHOICE_CUE
        )
        body = {
            "model": self.model,
            "messages": [
                {"role": "system", "content": self.preamble},
                {"role": "user", "content": comparison_text("", conversation, first, second).strip() + "\n" + cue},
            ],
            "temperature": 0,
            "max_tokens": self.rationale_tokens if self.chain_of_thought else 1,
            "logprobs": True,
            "top_logprobs": 5,
        }
        choice = self.api.complete(body)
        preference = preference_from_logprobs(choice.get("logprobs"))
        if preference is None:
            preference = preference_from_text(choice.get("message", {}).get("content") or "")
        if preference is None:
            self.api.count_unparsed()
            return 0.5
        return preference


def preference_from_logprobs(logprobs: dict | None) -> float | None:
    """P(first) from the last answer token that is "1" or "2", over its top alternatives."""
    tokens = (logprobs or {}).get("content") or []
    for position in reversed(tokens):
        candidates = {position.get("token", "").strip(): position.get("logprob")}
        for alternative in position.get("top_logprobs") or []:
            candidates.setdefault(alternative.get("token", "").strip(), alternative.get("logprob"))
        if "1" in candidates or "2" in candidates:
            first = math.exp(candidates["1"]) if candidates.get("1") is not None else 0.0
            second = math.exp(candidates["2"]) if candidates.get("2") is not None else 0.0
            return first / (first + second) if first + second > 0 else None
    return None


def preference_from_text(text: str) -> float | None:
    digits = re.findall(r"\b([12])\b", text)
    return None if not digits else 1.0 if digits[-1] == "1" else 0.0

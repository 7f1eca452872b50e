"""The policy server: an OpenAI-compatible chat-completions endpoint whose every exchange, and the
feedback people give on it, lands in the feedback store (`rlhf serve policy`).

- POST /v1/chat/completions: OpenAI's request and answer (model, messages, temperature, top_p,
  max_tokens or max_completion_tokens, n of 1, or 2 to show two answers side by side for a choice;
  other OpenAI fields are accepted and ignored, `stream: true` is refused). The answer's `id` is the
  exchange's id, for feedback.
- POST /v1/feedback: {"exchange_id", one of "thumbs" (up/down), "rating" (1-5), "edited" (a better
  answer, written by the client), "choice" (0 or 1, of two answers shown side by side); "answer"
  (which of two answers thumbs, a rating or an edit is about) and "reason" optional}. An edit or a
  choice becomes a preferred pair that a snapshot takes as the import set `deployed`
  (rlhf/store/exchanges.py).
- GET /v1/models; GET /health (open, for load balancers).

Clients sign in with the ranking page's tokens (`rlhf annotate add-annotator NAME`: the store keeps
their sha256 and revocations); an answer is kept for `sign_in_ttl_s` (SIGN_IN_TTL_S), so a
revocation holds within that time. Limits before work (rlhf/http_limits.py): the body's size (413), the token (401), a rate
per client (429), then parsing (422, one line); then messages, characters and max_tokens (413).
Feedback on an exchange that is not the client's own, or not in the store, is a 404.

Recording: the exchange is committed to the store before the client gets its answer, by the
group-commit writer (recorder.py), so an answer the client received is in the store even if the
server is killed right after; if the store stays busy past `store_timeout_s`, the client gets 503
with Retry-After and no answer (the exchange may still be stored once the store is free: an
exchange stored but never answered is possible, one answered but not stored is not). `record=False` serves without recording
(exchanges are not stored, feedback finds none): the bench's baseline.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import threading
import time
from typing import Annotated, Literal

import filelock
import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from rlhf import chat
from rlhf.annotation.annotators import hash_token, sign_in
from rlhf.errors import InputError, StoreError
from rlhf.http_limits import Guard, RateLimit, has_lone_surrogate, one_line_validation_errors
from rlhf.serving.backends import BackendError, Completion, Sampling, sampling_json
from rlhf.serving.limits import ServingLimits
from rlhf.serving.recorder import Recorder
from rlhf.store import FeedbackStore
from rlhf.store import exchanges as stored

SIGN_IN_TTL_S = 5.0
SHUTDOWN_S = 10
OPEN_PATHS = {"/health"}
Id = Annotated[str, StringConstraints(min_length=1, max_length=200)]


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI messages may carry a `name`
    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields we do not use (user, seed, ...)
    model: str | None = Field(None, max_length=200)
    messages: list[Message] = Field(min_length=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    n: int = Field(1, ge=1, le=2)
    stream: bool = False


class Feedback(BaseModel):
    model_config = ConfigDict(extra="forbid")
    exchange_id: Id
    thumbs: Literal["up", "down"] | None = None
    rating: int | None = Field(None, ge=1, le=5)
    edited: str | None = Field(None, min_length=1)
    choice: Literal[0, 1] | None = None
    answer: Literal[0, 1] = 0
    """Which answer thumbs, a rating or an edit is about (the second of two side by side: 1)."""
    reason: str | None = None


def refused(status: int, detail: str) -> HTTPException:
    return HTTPException(status_code=status, detail=detail)


def check_text(text: str | None, where: str, limits: ServingLimits) -> None:
    if text is None:
        return
    if len(text) > limits.max_chars:
        raise refused(413, f"{where}: {len(text)} characters, over the limit of {limits.max_chars} (--max-chars)")
    if has_lone_surrogate(text):
        raise refused(422, f"{where}: holds a lone surrogate (not valid Unicode text)")


def sampling_of(request: ChatRequest, limits: ServingLimits) -> Sampling:
    """The request's sampling, within the limits (module docstring), or a refusal."""
    if request.stream:
        raise refused(422, "stream: streaming is not supported; send stream: false")
    if len(request.messages) > limits.max_messages:
        raise refused(
            413, f"messages: {len(request.messages)}, over the limit of {limits.max_messages} (--max-messages)"
        )
    for i, message in enumerate(request.messages):
        check_text(message.content, f"messages[{i}].content", limits)
    max_tokens = request.max_completion_tokens or request.max_tokens or limits.default_max_tokens
    if max_tokens > limits.max_tokens:
        raise refused(413, f"max_tokens: {max_tokens}, over the limit of {limits.max_tokens} (--max-tokens)")
    return Sampling(request.temperature, request.top_p, max_tokens, request.n)


def feedback_of(feedback: Feedback, limits: ServingLimits) -> dict:
    """The store's form of a feedback request (rlhf.store.exchanges.record_feedback), or a refusal."""
    given = [k for k in ("thumbs", "rating", "edited", "choice") if getattr(feedback, k) is not None]
    if len(given) != 1:
        raise refused(422, f"give exactly one of thumbs, rating, edited, choice (got {', '.join(given) or 'none'})")
    check_text(feedback.edited, "edited", limits)
    check_text(feedback.reason, "reason", limits)
    kind = {"thumbs": "thumbs", "rating": "rating", "edited": "edit", "choice": "choice"}[given[0]]
    return {
        "exchange_id": feedback.exchange_id,
        "kind": kind,
        "answer": feedback.choice if kind == "choice" else feedback.answer,
        "thumbs_up": None if feedback.thumbs is None else feedback.thumbs == "up",
        "rating": feedback.rating,
        "reason": feedback.reason,
        "edited": feedback.edited,
    }


def completion_body(exchange_id: str, completion: Completion) -> dict:
    """OpenAI's chat.completion object."""
    return {
        "id": exchange_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": completion.model,
        "choices": [
            {"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": reason}
            for i, (text, reason) in enumerate(zip(completion.answers, completion.finish_reasons))
        ],
        "usage": completion.usage,
    }


class SignIn:
    """sign_in against the store, each token's answer kept `ttl_s` (a read of the store per
    request would queue behind the recorder's writes)."""

    def __init__(self, store: FeedbackStore, ttl_s: float = SIGN_IN_TTL_S):
        self.store, self.ttl_s, self.known, self.lock = store, ttl_s, {}, threading.Lock()

    def __call__(self, token: str) -> tuple[str | None, str]:
        key, now = hash_token(token), time.monotonic()
        with self.lock:
            cached = self.known.get(key)
        if cached is not None and now - cached[0] < self.ttl_s:
            return cached[1]
        try:
            answer = sign_in(self.store, token)
        except InputError:  # the store is busy: a known client stays signed in meanwhile
            if cached is not None and cached[1][0] is not None:
                return cached[1]
            return None, "the store is busy; try again in a moment"
        with self.lock:
            if len(self.known) > 10_000:
                self.known.clear()
            self.known[key] = (now, answer)
        return answer


def create_app(
    backend,
    store: FeedbackStore,
    limits: ServingLimits | None = None,
    record: bool = True,
    store_timeout_s: float = 30.0,
    test_fraction: float = 0.2,
    sign_in_ttl_s: float = SIGN_IN_TTL_S,
) -> FastAPI:
    """The app over `backend` (backends.LocalPolicy or backends.Upstream) and `store` (its tokens,
    and where exchanges are recorded unless `record` is False). `test_fraction`: the share of
    prompts a preferred pair puts in the test split, by a hash of the prompt (collect_prompts')."""
    limits = limits or ServingLimits()
    recorder: Recorder | None = None

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        nonlocal recorder
        recorder = app.state.recorder = Recorder(store) if record else None
        try:
            yield
        finally:
            if recorder is not None:
                recorder.close()

    app = FastAPI(title="rlhf policy server", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    one_line_validation_errors(app)
    # a sign-in waits for the writes before it at most this long, then 503 (a known client's stands)
    readers = FeedbackStore(store.path, lock_timeout_s=min(store_timeout_s, 10.0), create=False)
    app.add_middleware(
        Guard,
        max_body_bytes=limits.max_body_bytes,
        authenticate=SignIn(readers, sign_in_ttl_s),
        guarded=lambda path: path not in OPEN_PATHS,
        rate=RateLimit(limits.rate_limit, burst=max(1, int(2 * limits.rate_limit))),
    )

    def client(request: Request) -> str:
        return request.state.principal  # signed in by the Guard, before the body was read

    def write(job):
        """The job committed by the recorder, or 503: the store stayed busy past store_timeout_s."""
        try:
            return recorder.submit(job, timeout_s=store_timeout_s)
        except (filelock.Timeout, StoreError, TimeoutError) as error:
            detail = f"the store is busy ({type(error).__name__}): not recorded in time, so not answered; try again"
            raise HTTPException(status_code=503, detail=detail, headers={"Retry-After": "2"}) from None

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "recording": record}

    @app.get("/v1/models")
    def models(name: str = Depends(client)) -> dict:
        return {"object": "list", "data": [{"id": backend.name, "object": "model", "owned_by": "rlhf"}]}

    @app.post("/v1/chat/completions")
    def chat_completions(request: ChatRequest, name: str = Depends(client)) -> dict:
        sampling = sampling_of(request, limits)
        conversation = [{"role": m.role, "content": m.content} for m in request.messages]
        try:
            completion = backend.complete(conversation, sampling, request.model)
        except InputError as error:  # the prompt does not fit the model's context
            raise refused(413, str(error)) from None
        except BackendError as error:
            raise refused(502, str(error)) from None
        exchange_id = f"chatcmpl-{secrets.token_hex(16)}"
        if recorder is not None:
            row = {
                "exchange_id": exchange_id,
                "client": name,
                "messages": chat.to_json(conversation),
                "answers": json.dumps(completion.answers, ensure_ascii=False),
                "model": completion.model,
                "policy_checkpoint": completion.policy_checkpoint,
                "sampling": sampling_json(completion),
                "rendered_prompt": completion.rendered_prompt,
            }
            write(lambda con: stored.record_exchanges(con, [row]))
        return completion_body(exchange_id, completion)

    @app.post("/v1/feedback")
    def feedback(request: Feedback, name: str = Depends(client)) -> dict:
        given = feedback_of(request, limits)
        if recorder is None:
            raise refused(404, f"exchange {request.exchange_id[:80]!r}: this server records no exchanges (--no-record)")
        outcome = write(lambda con: stored.record_feedback(con, name, given, test_fraction))
        if isinstance(outcome, stored.Refusal):
            raise refused(outcome.status, outcome.detail)
        return {"saved": True, "exchange_id": request.exchange_id, "kind": given["kind"], **outcome}

    return app


def policy_server(app: FastAPI, host: str, port: int) -> uvicorn.Server:
    """uvicorn leaving logging alone (rlhf.rewards.server.reward_server says why). A stop waits at
    most SHUTDOWN_S for open requests: a client that keeps its connection open cannot hold it up."""
    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", log_config=None, timeout_graceful_shutdown=SHUTDOWN_S
    )
    return uvicorn.Server(config)


def serve(
    backend,
    store_path: str,
    host: str = "127.0.0.1",
    port: int = 8080,
    limits: ServingLimits | None = None,
    record: bool = True,
) -> None:
    """Serve `backend` on http://host:port/v1 until interrupted, recording into the store at `store_path`
    (created, or brought to the current schema, first: the clients' tokens are read from it)."""
    store = FeedbackStore(store_path)
    store.schema_version()
    policy_server(create_app(backend, store, limits, record), host, port).run()

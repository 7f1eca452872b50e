"""Limits before work, for every server we ship (STYLE.md 14: bound the body, check the token, then parse).

`Guard` is ASGI middleware in front of a FastAPI app. Before the app reads or parses anything:

1. a Content-Length over `max_body_bytes` is refused with 413 at once (nothing is read);
2. on guarded paths, the bearer token is checked (`authenticate`, run on a worker thread: it may
   read a store) and refused with 401;
3. each token (or, without authentication, each client address) is rate limited by a token
   bucket: 429 with Retry-After;
4. the body is read while it streams and refused with 413 as soon as it passes `max_body_bytes`
   (a chunked body has no Content-Length to check first);

then the app gets the body, buffered (at most `max_body_bytes`), and the signed-in name in
`request.state.principal`. Every refusal is JSON `{"detail": "<one line naming the limit>"}`.

`one_line_validation_errors` turns FastAPI's list of validation errors into that one line, and
never echoes the input (a lone surrogate in it cannot be encoded as UTF-8: a 500 before).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # FastAPI loads in about 0.4 s: the CLI's parser reads Limits' defaults without it
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

Authenticate = Callable[[str], tuple[str | None, str]]
"""token -> (principal, "") or (None, why refused)."""


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the reward server (each a flag of `rlhf serve reward`; here, not in
    rlhf.rewards.server, so the CLI reads the defaults without importing torch)."""

    max_body_bytes: int = 8 * 1024 * 1024
    """--max-body-bytes: the request body, checked from its header and while it streams."""
    max_queries: int = 512
    """--max-queries: exchanges per request (a trainer sends its micro-batch)."""
    max_chars: int = 50_000
    """--max-chars: characters per text (each query, prompt, response and message)."""
    max_tokens: int = 16_384
    """--max-tokens: tokens per query, counted before the model's own left cut."""
    rate_limit: float = 200.0
    """--rate-limit: requests per second per token (or per client address without tokens); 0: off."""


def printable(text: str) -> str:
    """`text` safe to encode as UTF-8: a lone surrogate becomes its escape."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def has_lone_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


@dataclass
class RateLimit:
    """A token bucket per key: `per_s` requests a second on average, bursts of `burst`. per_s <= 0: off."""

    per_s: float
    burst: int
    buckets: dict[str, tuple[float, float]] = field(default_factory=dict)

    def wait_s(self, key: str, now: float | None = None) -> float:
        """0 if `key` may go now (and takes a token), else the seconds until it may."""
        if self.per_s <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        tokens, then = self.buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - then) * self.per_s)
        if tokens < 1.0:
            self.buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.per_s
        self.buckets[key] = (tokens - 1.0, now)
        if len(self.buckets) > 100_000:  # many addresses: forget the full buckets
            self.buckets = {k: v for k, v in self.buckets.items() if v[0] < self.burst - 1}
        return 0.0


def bearer(authorization: bytes) -> str:
    text = authorization.decode("latin-1").strip()
    return text[7:].strip() if text[:7].lower() == "bearer " else ""


async def refuse(send, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"detail": printable(detail)}).encode()
    extra = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra],
        }
    )
    await send({"type": "http.response.body", "body": body})


class Guard:
    """ASGI middleware: body size, token, rate, then the app (module docstring)."""

    def __init__(
        self,
        app,
        max_body_bytes: int,
        authenticate: Authenticate | None = None,
        guarded: Callable[[str], bool] = lambda path: True,
        rate: RateLimit | None = None,
        body_flag: str = "--max-body-bytes",
    ):
        self.app, self.max_body_bytes, self.authenticate = app, max_body_bytes, authenticate
        self.guarded, self.rate, self.body_flag = guarded, rate, body_flag

    def too_large(self, size: str) -> str:
        return f"request body {size} is over the limit of {self.max_body_bytes} bytes ({self.body_flag})"

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit():
                return await refuse(send, 400, "Content-Length is not a number")
            if int(length) > self.max_body_bytes:
                return await refuse(send, 413, self.too_large(f"of {int(length)} bytes"))
        principal = None
        if self.authenticate is not None and self.guarded(scope["path"]):
            import anyio.to_thread

            principal, why = await anyio.to_thread.run_sync(
                self.authenticate, bearer(headers.get(b"authorization", b""))
            )
            if principal is None:
                status = 503 if why.startswith("the store is busy") else 401
                return await refuse(send, status, why, {"Retry-After": "2"} if status == 503 else None)
        if self.rate is not None:
            key = principal if principal is not None else f"address:{(scope.get('client') or ('?',))[0]}"
            wait = self.rate.wait_s(key)
            if wait > 0:
                return await refuse(
                    send,
                    429,
                    f"over the rate limit of {self.rate.per_s:g} requests/s per token (--rate-limit)",
                    {"Retry-After": str(max(1, math.ceil(wait)))},
                )
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.max_body_bytes:
                return await refuse(send, 413, self.too_large("(streamed)"))
            more = message.get("more_body", False)
        scope.setdefault("state", {})["principal"] = principal
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def validation_line(error: RequestValidationError) -> str:
    """FastAPI's validation errors as one line: `where: what` for each, without the input."""
    parts = []
    for problem in error.errors()[:5]:
        # a field name comes from the client: one with a newline or other control character is quoted
        where = ".".join(str(p) if str(p).isprintable() else repr(p) for p in problem.get("loc", ())[1:]) or "body"
        parts.append(f"{where}: {problem.get('msg', 'invalid')}")
    more = len(error.errors()) - len(parts)
    return printable("; ".join(parts) + (f"; and {more} more" if more > 0 else ""))


def one_line_validation_errors(app: FastAPI) -> None:
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": validation_line(error)}, status_code=422)

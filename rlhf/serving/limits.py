"""What one request may ask of the policy server: each a flag of `rlhf serve policy`. Here, apart from
the app, so the CLI builds its parser without importing FastAPI, DuckDB or torch."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServingLimits:
    max_body_bytes: int = 1024 * 1024
    """--max-body-bytes: the request body, checked from its header and while it streams (413)."""
    max_messages: int = 256
    """--max-messages: chat messages per request (413)."""
    max_chars: int = 50_000
    """--max-chars: characters per message, edited answer or reason (413)."""
    max_tokens: int = 512
    """--max-tokens: the most tokens an answer may ask for (max_tokens over it: 413)."""
    default_max_tokens: int = 128
    """Tokens an answer may take when the request names no max_tokens."""
    rate_limit: float = 20.0
    """--rate-limit: requests per second per client token, 429 past it; 0: off."""

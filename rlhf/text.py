"""How a prompt and a response become one text, the same way for the judge, the reward model and PPO."""

from __future__ import annotations

import hashlib


def join(prompt: str, response: str) -> str:
    return f"{prompt} {response.strip()}"


def content_id(*parts: object) -> str:
    """A natural key: the sha256 of the parts, so the same content always gets the same id."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(str(part).encode())
        digest.update(b"\x1f")
    return digest.hexdigest()[:32]


def config_digest(*parts: object) -> str:
    """Eight hex digits naming a configuration (a judge's principles, prompt, unsafe words) in a version."""
    return content_id(*parts)[:8]

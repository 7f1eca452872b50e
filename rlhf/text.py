"""Content hashes: natural keys, the train/test split of a prompt, configuration digests."""

from __future__ import annotations

import hashlib


def content_id(*parts: object) -> str:
    """A natural key: the sha256 of the parts, so the same content always gets the same id."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(str(part).encode())
        digest.update(b"\x1f")
    return digest.hexdigest()[:32]


def split_of(prompt: str, test_fraction: float) -> str:
    """train or test, from a hash of the text: stable across runs, machines and file order."""
    bucket = int(hashlib.sha256(prompt.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "test" if bucket < test_fraction else "train"


def config_digest(*parts: object) -> str:
    """Eight hex digits naming a configuration (a judge's principles, prompt, unsafe words) in a version."""
    return content_id(*parts)[:8]

"""Annotators and their tokens. A token is a random secret a person signs in with; the store keeps
only its sha256, so a copy of the store signs nobody in. Tokens are 32 random bytes: a fast hash
is enough for secrets that cannot be guessed (a slow, salted hash is for passwords people pick).

The tokens file of earlier versions (`{"<token>": "alice"}`) still works: serving the page with it
stores each of its tokens hashed (once), and from then on the store is what the page reads. A token
revoked in the store stays refused even while the file still lists it.
"""

from __future__ import annotations

import hashlib
import secrets
from pathlib import Path

from rlhf.errors import InputError
from rlhf.store import FeedbackStore

TOKEN_BYTES = 32


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_name(name: str) -> str:
    """Names show on the page and in the store; one clear error for an empty or odd one."""
    if not name or name != name.strip() or len(name) > 100 or not name.isprintable():
        raise InputError(f"annotator name {name!r}: use 1-100 printable characters, no leading or trailing spaces")
    return name


def add_annotator(store: FeedbackStore, name: str) -> str:
    """A new token for `name`, stored hashed; returns the token (shown once, never stored).
    Refuses a name that still holds an accepted token: revoke it first, so two are never live by mistake."""
    check_name(name)
    if store.active_tokens(name):
        raise InputError(f"{name}: already has a token; `rlhf annotate revoke {name}` first to issue a new one")
    token = secrets.token_urlsafe(TOKEN_BYTES)
    store.add_token(name, hash_token(token), "add-annotator")
    return token


def revoke_annotator(store: FeedbackStore, name: str) -> int:
    """Refuse every token of `name` from now on (their rankings stay); returns how many were revoked."""
    revoked = store.revoke_tokens(name)
    if not revoked:
        raise InputError(f"{name}: no accepted token to revoke (see `rlhf annotate status`)")
    return revoked


def import_tokens(store: FeedbackStore, tokens: dict[str, str], source: str) -> int:
    """Store the hashes of a tokens file's {token: name}; returns how many were new to the store."""
    return sum(store.add_token(check_name(name), hash_token(token), source) for token, name in tokens.items())


def sign_in(store: FeedbackStore, token: str) -> tuple[str | None, str]:
    """(annotator, "") for an accepted token, else (None, why): "token refused" or "token revoked"."""
    found = store.token_annotator(hash_token(token)) if token else None
    if found is None:
        return None, "token refused"
    name, revoked = found
    return (None, "token revoked") if revoked else (name, "")


def migration_message(path: str | Path, added: int, total: int) -> str:
    """What the operator is told when a tokens file is read: the store holds its tokens now."""
    return (
        f"rlhf: {path}: {added} of {total} tokens newly stored (sha256) in the store; the page signs people "
        "in from the store, so the file is no longer needed (rlhf annotate add-annotator NAME / revoke NAME)"
    )

"""Who may call a server, and where it may listen.

The reward server's bearer tokens live in a tokens file that holds only their sha256, as the ranking
page's store does (rlhf/annotation/annotators.py: 32 random bytes, so a fast hash is enough):
`{"<sha256 hex>": "<name>", ...}`. `rlhf serve reward-token NAME --tokens FILE` adds one and prints
the token once. A server bound to an address other machines can reach is refused unless it checks
tokens or the user says --insecure, and warns either way: the tokens travel in plain HTTP.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
from pathlib import Path

from rlhf.annotation.annotators import TOKEN_BYTES, check_name, hash_token
from rlhf.errors import InputError


def load_token_hashes(path: str | Path) -> dict[str, str]:
    """{sha256 hex: name} from a tokens file; one clear error if it is missing or malformed."""
    try:
        hashes = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: tokens file not found (rlhf serve reward-token NAME --tokens {path})") from None
    except json.JSONDecodeError as error:
        raise InputError(f"{path}: line {error.lineno}: not valid JSON ({error.msg})") from None
    if not isinstance(hashes, dict) or not all(
        isinstance(k, str) and len(k) == 64 and all(c in "0123456789abcdef" for c in k) and isinstance(v, str)
        for k, v in hashes.items()
    ):
        raise InputError(f"{path}: expected a JSON object of token sha256 (64 hex digits) -> name")
    return hashes


def add_token(path: str | Path, name: str) -> str:
    """A new token for `name`, its sha256 added to the tokens file (created if missing); returns the token."""
    check_name(name)
    path = Path(path)
    hashes = load_token_hashes(path) if path.exists() else {}
    token = secrets.token_urlsafe(TOKEN_BYTES)
    hashes[hash_token(token)] = name
    path.write_text(json.dumps(hashes, indent=1) + "\n")
    path.chmod(0o600)
    return token


def token_checker(hashes: dict[str, str]):
    """authenticate(token) -> (name, "") or (None, "token refused"), for rlhf.http_limits.Guard."""

    def authenticate(token: str) -> tuple[str | None, str]:
        name = hashes.get(hash_token(token)) if token else None
        return (name, "") if name is not None else (None, "token refused")

    return authenticate


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def check_host(host: str, authenticated: bool, insecure: bool, server: str) -> str | None:
    """The warning to print for `host` (None on loopback); raises InputError for a reachable
    address without authentication unless `insecure`."""
    if is_loopback(host):
        return None
    if not authenticated and not insecure:
        raise InputError(
            f"--host {host}: other machines could call the {server} with no token; pass --tokens FILE "
            "(rlhf serve reward-token NAME --tokens FILE), or --insecure to serve it open anyway"
        )
    if not authenticated:
        return f"rlhf: warning: the {server} on {host} is open to anyone who can reach it (--insecure)"
    return (
        f"rlhf: warning: the {server} on {host} is reachable from other machines; its tokens travel in plain "
        "HTTP: put TLS (a reverse proxy) in front of it"
    )

"""The ranking page's HTTP API. All state is in the feedback store (its concurrency rule holds:
each request is one short transaction), so the page and the pipeline can run at the same time.

Every /api request needs `Authorization: Bearer <token>`; the store holds each token's sha256 and
whether it was revoked (rlhf/annotation/annotators.py), and is asked on every request, so a
revocation holds at once. An item is a conversation: the prompt's chat messages (several
turns, each shown with its role) and each response's turns after it (`FeedbackStore.next_item`).
The page shows model text with textContent only, and a Content-Security-Policy forbids inline
script, so a message that contains HTML stays text. The guidelines are the one piece of HTML the
page inserts: rendered from markdown on the server with raw HTML escaped (guidelines.py).

Options of a team (all off by default): `suggestions` starts each list from the AI judge's ranking
(it anchors people, so it is opt-in, and each ranking records whether it started so); the overlap
is a store setting (FeedbackStore.set_overlap), so the page, the pipeline and the flow agree on
what still waits.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Literal

from fastapi import Depends, FastAPI, Header, HTTPException
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel, Field

from rlhf.annotation.annotators import import_tokens, sign_in
from rlhf.annotation.guidelines import Guidelines
from rlhf.errors import InputError, StoreError
from rlhf.store import FeedbackStore

STATIC = Path(__file__).parent / "static"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; object-src 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class Submission(BaseModel):
    item_id: str
    order: list[str] = Field(min_length=2)
    """Response ids, best first."""
    tied_with_above: list[bool]
    """Per position: shares the rank of the response above it."""
    unsafe: list[str] = []
    from_suggestion: bool = False
    """The order started from the AI judge's ranking (only when the page offers suggestions)."""
    mode: Literal["rank", "pairwise"] = "rank"
    """How the order was made: the list (drag, keys) or pairwise choices."""


class Skip(BaseModel):
    item_id: str


def load_tokens(path: str | Path) -> dict[str, str]:
    """{token: annotator} from a JSON file; one clear error if it is missing or malformed."""
    try:
        tokens = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: tokens file not found") from None
    except json.JSONDecodeError as error:
        raise InputError(f"{path}: line {error.lineno}: not valid JSON ({error.msg})") from None
    if (
        not isinstance(tokens, dict)
        or not tokens
        or not all(isinstance(k, str) and len(k) >= 16 and isinstance(v, str) and v for k, v in tokens.items())
    ):
        raise InputError(f"{path}: expected a JSON object of token (16+ characters) -> annotator name")
    return tokens


def ranks_from_order(order: list[str], tied_with_above: list[bool]) -> dict[str, int]:
    """Competition ranks from a best-first order where some positions tie with the one above."""
    ranks: dict[str, int] = {}
    for position, (response_id, tied) in enumerate(zip(order, tied_with_above)):
        ranks[response_id] = ranks[order[position - 1]] if tied and position else position + 1
    return ranks


def create_app(
    store: FeedbackStore,
    tokens: dict[str, str] | None = None,
    guidelines: Guidelines | None = None,
    suggestions: bool = False,
    tokens_source: str = "tokens-file",
) -> FastAPI:
    """The page over `store`. `tokens` ({token: name}, a tokens file's content) are stored hashed
    first, so callers of earlier versions keep working; people sign in from the store."""
    app = FastAPI(title="rlhf ranking page", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.tokens_added = import_tokens(store, tokens, tokens_source) if tokens else 0
    run_id = f"annotate-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    guidelines = guidelines or Guidelines()

    def annotator(authorization: str = Header(default="")) -> str:
        name, refusal = sign_in(store, authorization.removeprefix("Bearer ").strip())
        if name is None:
            raise HTTPException(status_code=401, detail=refusal)
        return name

    @app.middleware("http")
    async def security_headers(request, call_next):
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    @app.get("/")
    def page() -> Response:
        return FileResponse(STATIC / "page.html", media_type="text/html")

    @app.get("/page.js")
    def script() -> Response:
        return FileResponse(STATIC / "page.js", media_type="text/javascript")

    @app.get("/page.css")
    def style() -> Response:
        return FileResponse(STATIC / "page.css", media_type="text/css")

    @app.get("/api/guidelines")
    def read_guidelines(name: str = Depends(annotator)) -> dict:
        return guidelines.as_json()

    @app.get("/api/next")
    def next_item(name: str = Depends(annotator)) -> dict:
        item = store.next_item(name, suggest=suggestions)
        return {"annotator": name, "item": item, "progress": store.annotation_progress(name)}

    @app.post("/api/submit")
    def submit(submission: Submission, name: str = Depends(annotator)) -> dict:
        if len(submission.tied_with_above) != len(submission.order) or len(set(submission.order)) != len(
            submission.order
        ):
            raise HTTPException(status_code=422, detail="order and tied_with_above must match, without repeats")
        if submission.from_suggestion and not suggestions:
            raise HTTPException(status_code=422, detail="this page offers no suggestions")
        ranks = ranks_from_order(submission.order, submission.tied_with_above)
        try:
            pairs = store.record_human_ranking(
                name, submission.item_id, ranks, submission.unsafe, run_id,
                from_suggestion=submission.from_suggestion, mode=submission.mode,
            )  # fmt: skip
        except StoreError as error:
            raise HTTPException(status_code=422, detail=str(error)) from None
        return {"pairs": pairs, "progress": store.annotation_progress(name)}

    @app.post("/api/skip")
    def skip(request: Skip, name: str = Depends(annotator)) -> dict:
        store.skip_item(name, request.item_id)
        return {"progress": store.annotation_progress(name)}

    return app

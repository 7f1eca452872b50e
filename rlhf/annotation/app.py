"""The ranking page's HTTP API. All state is in the feedback store (its concurrency rule holds:
each request is one short transaction), so the page and the pipeline can run at the same time.

Every /api request needs `Authorization: Bearer <token>`; the store holds each token's sha256 and
whether it was revoked (rlhf/annotation/annotators.py), and is asked on every request, so a
revocation holds at once. An item is a conversation: the prompt's chat messages (several
turns, each shown with its role) and each response's turns after it (`FeedbackStore.next_item`).
The page shows model text with textContent only, and a Content-Security-Policy forbids inline
script, so a message that contains HTML stays text. The guidelines are the one piece of HTML the
page inserts: rendered from markdown on the server with raw HTML escaped (guidelines.py).

An item of one response asks for a thumbs up or down instead of a ranking (the binary mode: good
or bad, with an optional reason, `POST /api/label`); the store keeps it as a binary label with the
annotator and the item (rlhf/store/binary.py), and counts it as that person's ranking of the item.

Options of a team (all off by default): `suggestions` starts each list from the AI judge's ranking
(it anchors people, so it is opt-in, and each ranking records whether it started so); the overlap
is a store setting (FeedbackStore.set_overlap), so the page, the pipeline and the flow agree on
what still waits.

Limits before work (rlhf/http_limits.py): the body's size (413), then the token (401), then a rate
per annotator (429), then parsing; unknown fields, wrong types and oversized ids are a 422 in one
line. The page accepts a ranking or a skip only for an item it served to that person and that they
have not ranked or skipped yet; the same submission sent twice is saved once. Each is written to a
durable local journal before the page says "saved", and one writer drains the journal into the
store (rlhf/annotation/journal.py): a busy store (a stage holding its lock) delays the copy, never
loses the ranking. A request that needs the store while it is busy answers 503 with Retry-After,
and the page tries again by itself; the next item comes from the page's copy of the queue while
the store is busy, so people keep ranking through a stage's minute.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StringConstraints

from rlhf.annotation.annotators import hash_token, import_tokens, sign_in
from rlhf.annotation.guidelines import Guidelines
from rlhf.annotation.journal import Drainer, Journal, StoreBusy, is_busy, journal_path
from rlhf.errors import InputError
from rlhf.http_limits import Guard, RateLimit, one_line_validation_errors
from rlhf.store import FeedbackStore
from rlhf.store.binary import BINARY_MODE

STATIC = Path(__file__).parent / "static"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; object-src 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


Id = Annotated[str, StringConstraints(min_length=1, max_length=200)]
MAX_RESPONSES = 100
MAX_REASON = 2000  # characters of a thumbs up/down's reason
BUSY = "the store is busy (a pipeline stage or another program holds it); the page tries again by itself"


class Submission(BaseModel):
    model_config = ConfigDict(extra="forbid")
    item_id: Id
    order: list[Id] = Field(min_length=2, max_length=MAX_RESPONSES)
    """Response ids, best first."""
    tied_with_above: list[bool] = Field(max_length=MAX_RESPONSES)
    """Per position: shares the rank of the response above it."""
    unsafe: list[Id] = Field(default=[], max_length=MAX_RESPONSES)
    from_suggestion: bool = False
    """The order started from the AI judge's ranking (only when the page offers suggestions)."""
    mode: Literal["rank", "pairwise"] = "rank"
    """How the order was made: the list (drag, keys) or pairwise choices."""


class Label(BaseModel):
    """Thumbs up/down of an item that asks for one response's label (the binary mode)."""

    model_config = ConfigDict(extra="forbid")
    item_id: Id
    response_id: Id
    desirable: StrictBool
    """Good (true) or bad (false)."""
    reason: Annotated[str, StringConstraints(strip_whitespace=True, max_length=MAX_REASON)] | None = None
    """Why, in the annotator's words (optional; blank is none)."""


class Skip(BaseModel):
    model_config = ConfigDict(extra="forbid")
    item_id: Id


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


def busy(status: int = 503) -> HTTPException:
    return HTTPException(status_code=status, detail=BUSY, headers={"Retry-After": "2"})


def create_app(
    store: FeedbackStore,
    tokens: dict[str, str] | None = None,
    guidelines: Guidelines | None = None,
    suggestions: bool = False,
    tokens_source: str = "tokens-file",
    max_body_bytes: int = 64 * 1024,
    rate_limit: float = 20.0,
    busy_timeout_s: float = 0.5,
) -> FastAPI:
    """The page over `store`. `tokens` ({token: name}, a tokens file's content) are stored hashed
    first, so callers of earlier versions keep working; people sign in from the store. Requests
    wait at most `busy_timeout_s` for the store, then answer from the journal and the queue's copy
    (its items carry no suggestion) or 503; `rate_limit` is per annotator a second."""
    tokens_added = import_tokens(store, tokens, tokens_source) if tokens else 0
    run_id = f"annotate-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    guidelines = guidelines or Guidelines()
    view = FeedbackStore(store.path, lock_timeout_s=busy_timeout_s, retries=3)  # requests never wait long
    journal = Journal(journal_path(store))
    drainer = Drainer(journal, view, run_id)
    signed_in: dict[str, str] = {}  # token sha256 -> name: the last answer, used only while the store is busy

    def ask_store(method, *args):
        """`method(*args)` on the store, or StoreBusy at once while the store is known busy (a request
        found it so and the drainer has not got in since): requests then answer without waiting on it."""
        if not drainer.store_free():
            raise StoreBusy
        try:
            return method(*args)
        except Exception as error:
            if not is_busy(error):
                raise
            drainer.note_busy()
            raise StoreBusy from None

    def authenticate(token: str) -> tuple[str | None, str]:
        """sign_in, asked on every request (a revocation holds at once). While the store is busy
        nobody can revoke a token, so the last answer for it stands until the store is free."""
        try:
            name, refusal = ask_store(sign_in, view, token)
        except StoreBusy:
            name = signed_in.get(hash_token(token))
            return (name, "") if name else (None, BUSY)
        if name is None:
            signed_in.pop(hash_token(token), None)
        else:
            signed_in[hash_token(token)] = name
        return name, refusal

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        drainer.start()  # also drains what a killed server left pending
        try:
            yield
        finally:
            drainer.stop()
            drainer.drain(wait_s=busy_timeout_s)

    app = FastAPI(title="rlhf ranking page", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.tokens_added, app.state.journal, app.state.drainer = tokens_added, journal, drainer
    one_line_validation_errors(app)
    app.add_middleware(
        Guard,
        max_body_bytes=max_body_bytes,
        authenticate=authenticate,
        guarded=lambda path: path.startswith("/api/"),
        rate=RateLimit(rate_limit, burst=max(1, int(2 * rate_limit))),
    )

    def annotator(request: Request) -> str:
        return request.state.principal  # signed in by the Guard, before the body was read

    def progress(name: str) -> dict | None:
        try:
            return ask_store(view.annotation_progress, name)
        except StoreBusy:
            return None

    def drain_a_little() -> None:
        """Copy what is pending now, if the store is free and the drainer is not at it already (then it
        copies this too): a request never waits on a backlog."""
        if drainer.store_free():
            drainer.drain(wait_s=0.05, limit=16)

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
        drain_a_little()
        try:
            if journal.pending_for(name):  # the store would serve an item this person sent again: the copy
                raise StoreBusy
            item = ask_store(view.next_item, name, suggestions)
        except StoreBusy:
            try:
                item = drainer.queue.next_for(name)
            except StoreBusy:
                raise busy() from None
        if item is not None:
            journal.serve(name, item["item_id"], [r["response_id"] for r in item["responses"]])
        return {"annotator": name, "item": item, "progress": progress(name)}

    def accept(name: str, item_id: str, action: str, body: dict) -> dict:
        """Journal the submission (durable before the answer), then try to copy it into the store now."""
        new, earlier = journal.accept(name, item_id, action, body)
        if not new and (earlier["action"], earlier["body"]) != (action, json.loads(json.dumps(body, sort_keys=True))):
            raise HTTPException(status_code=409, detail=f"you already {earlier['action']} this item; that stands")
        drain_a_little()
        outcome = journal.outcome(name, item_id)
        if outcome["error"]:
            raise HTTPException(status_code=422, detail=f"the store refused it: {outcome['error']}")
        return {
            "saved": True,
            "stored": outcome["stored"],
            "duplicate": not new,
            "pairs": outcome["pairs"],
            "progress": progress(name),
        }

    def served_ids(name: str, item_id: str) -> list[str]:
        shown = journal.served(name, item_id)
        if shown is None:
            raise HTTPException(
                status_code=409, detail=f"item {item_id[:80]!r} was not served to you; load the next item"
            )
        return shown

    @app.post("/api/submit")
    def submit(submission: Submission, name: str = Depends(annotator)) -> dict:
        if len(submission.tied_with_above) != len(submission.order) or len(set(submission.order)) != len(
            submission.order
        ):
            raise HTTPException(status_code=422, detail="order and tied_with_above must match, without repeats")
        if submission.from_suggestion and not suggestions:
            raise HTTPException(status_code=422, detail="this page offers no suggestions")
        shown = served_ids(name, submission.item_id)
        if sorted(submission.order) != sorted(shown) or not set(submission.unsafe) <= set(shown):
            raise HTTPException(
                status_code=422, detail="order must rank exactly the item's responses, unsafe among them"
            )
        body = {
            "ranks": ranks_from_order(submission.order, submission.tied_with_above),
            "unsafe": sorted(set(submission.unsafe)),
            "from_suggestion": submission.from_suggestion,
            "mode": submission.mode,
        }
        return accept(name, submission.item_id, "ranked", body)

    @app.post("/api/label")
    def label(request: Label, name: str = Depends(annotator)) -> dict:
        if served_ids(name, request.item_id) != [request.response_id]:
            raise HTTPException(
                status_code=422, detail="this item asks for a ranking, or for the label of another response"
            )
        body = {
            "mode": BINARY_MODE,
            "response_id": request.response_id,
            "desirable": request.desirable,
            "reason": request.reason or None,
        }
        return accept(name, request.item_id, "ranked", body)

    @app.post("/api/skip")
    def skip(request: Skip, name: str = Depends(annotator)) -> dict:
        served_ids(name, request.item_id)
        return accept(name, request.item_id, "skipped", {})

    return app

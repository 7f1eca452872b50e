"""Our reward model behind HTTP, in OpenRLHF's remote reward-model convention (see rlhf.rewards.remote).

POST /get_reward with {"query": [...], ...} answers {"rewards": [...], "scores": [...]} (the same
list twice, as OpenRLHF's serve_rm answers). A request that carries "prompt_messages" and
"responses" (our client sends them) is scored exactly as in process: each exchange rendered with
the reward model's own tokenizer (rlhf.scoring.score_exchanges). A request with "query" only (an
OpenRLHF trainer) is scored on those texts read as training reads an exchange (rlhf.scoring):
a plain-format text (a tokenizer without a chat template) gets the EOS training appends, where it
lacks it; a chat template's rendering is taken as it is; then cut from the left as the model was
trained. The texts must be the whole exchange, rendered as the model reads it. GET /health answers
{"status": "ok"} once the model is loaded.

Limits come before work (rlhf/http_limits.py): the body's size (413, from the header and while it
streams), then the bearer token where the server has tokens (401; stored as sha256 in a tokens
file, rlhf/http_auth.py), then a rate per token (429), then parsing. After parsing, before the
model: queries per request, characters per text and tokens per query (413, naming the flag), and
texts that cannot be scored: an empty query, a lone surrogate (422). A malformed request is never a
500. /docs, /redoc and /openapi.json are served only when asked for (`docs=True`, --docs).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import torch
import uvicorn
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict, Field
from transformers import PreTrainedTokenizerBase

from rlhf import chat
from rlhf.errors import InputError
from rlhf.http_auth import token_checker
from rlhf.http_limits import Guard, Limits, RateLimit, has_lone_surrogate, one_line_validation_errors
from rlhf.pretrained import load_tokenizer, resolve_device, use_fused_gelu
from rlhf.reward_models.ensemble import load_reward_model
from rlhf.scoring import ended, score_exchanges, score_texts

ROUTE = "/get_reward"
OPEN_PATHS = {"/health"}


class RewardRequest(BaseModel):
    # Other tools send keys of their own ("labels", ...): accepted and ignored.
    model_config = ConfigDict(extra="allow")
    query: list[str] = Field(min_length=1)
    prompts: list[str] | None = None
    prompt_messages: list[Any] | None = None
    responses: list[str] | None = None


def refusal(status: int, detail: str) -> HTTPException:
    return HTTPException(status_code=status, detail=detail)


def check_texts(value: Any, where: str, limits: Limits) -> None:
    """Every string in `value` (lists and objects walked): encodable, and within --max-chars."""
    if isinstance(value, str):
        if len(value) > limits.max_chars:
            raise refusal(413, f"{where}: {len(value)} characters, over the limit of {limits.max_chars} (--max-chars)")
        if has_lone_surrogate(value):
            raise refusal(422, f"{where}: holds a lone surrogate (not valid Unicode text)")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            check_texts(item, f"{where}[{i}]", limits)
    elif isinstance(value, dict):
        for key, item in value.items():
            check_texts(key, f"{where} key", limits)
            check_texts(item, f"{where}.{key}", limits)


def check_request(request: RewardRequest, tokenizer: PreTrainedTokenizerBase, limits: Limits) -> None:
    """The per-request limits (module docstring), before any work on the model."""
    if len(request.query) > limits.max_queries:
        raise refusal(413, f"query: {len(request.query)} texts, over the limit of {limits.max_queries} (--max-queries)")
    for name in ("query", "prompts", "prompt_messages", "responses"):
        check_texts(getattr(request, name), name, limits)
    for i, text in enumerate(request.query):
        if not text.strip():
            raise refusal(422, f"query[{i}]: empty; send the whole exchange as the model reads it")
    # A token is at least one UTF-8 byte for the tokenizers we load, so only texts longer than the
    # limit in bytes are counted (tokenizing them is the cost the limit bounds).
    long = [i for i, text in enumerate(request.query) if len(text.encode()) > limits.max_tokens]
    if long:
        counts = tokenizer([request.query[i] for i in long], add_special_tokens=False)["input_ids"]
        for i, ids in zip(long, counts):
            if len(ids) > limits.max_tokens:
                raise refusal(
                    413, f"query[{i}]: {len(ids)} tokens, over the limit of {limits.max_tokens} (--max-tokens)"
                )


def request_scores(
    model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, request: RewardRequest, batch_size: int
) -> torch.Tensor:
    """The reward of each exchange in `request`: from the conversations where it has them, else
    from the query texts (module docstring).  (N,)"""
    if request.prompt_messages is None or request.responses is None:
        return score_texts(model, tokenizer, [ended(tokenizer, text) for text in request.query], batch_size)
    if not len(request.prompt_messages) == len(request.responses) == len(request.query):
        raise InputError("query, prompt_messages and responses must be lists of the same length")
    conversations = [chat.as_conversation(m, f"prompt_messages[{i}]") for i, m in enumerate(request.prompt_messages)]
    return score_exchanges(model, tokenizer, conversations, request.responses, batch_size)


def create_app(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    batch_size: int = 64,
    limits: Limits = Limits(),
    token_hashes: dict[str, str] | None = None,
    docs: bool = False,
) -> FastAPI:
    """The server's app over a loaded reward model (tests build it around a tiny one).
    `token_hashes` ({sha256: name}, rlhf.http_auth): every route but /health needs one of their
    tokens; None: no authentication (loopback, or --insecure)."""
    model = use_fused_gelu(
        model.requires_grad_(False).eval()
    )  # as rlhf.policy_optimization.rollout.RewardScorer reads it
    lock = threading.Lock()  # FastAPI runs sync routes on a thread pool; one forward at a time
    app = FastAPI(
        title="rlhf reward model",
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    one_line_validation_errors(app)
    app.add_middleware(
        Guard,
        max_body_bytes=limits.max_body_bytes,
        authenticate=token_checker(token_hashes) if token_hashes is not None else None,
        guarded=lambda path: path not in OPEN_PATHS,
        rate=RateLimit(limits.rate_limit, burst=max(1, int(2 * limits.rate_limit))),
    )

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.post(ROUTE)
    def get_reward(request: RewardRequest) -> dict:
        check_request(request, tokenizer, limits)
        try:
            with lock:
                rewards = request_scores(model, tokenizer, request, batch_size).tolist()
        except InputError as error:  # a malformed request: the caller's to fix, not to retry
            raise HTTPException(status_code=400, detail=str(error)) from None
        return {"rewards": rewards, "scores": rewards}

    return app


def load_reward_app(
    model_dir: str | Path,
    device: str = "auto",
    batch_size: int = 64,
    limits: Limits = Limits(),
    token_hashes: dict[str, str] | None = None,
    docs: bool = False,
) -> FastAPI:
    """The app over the reward model (or ensemble) in `model_dir`, loaded as train_policy loads it."""
    tokenizer = load_tokenizer(model_dir)
    model = load_reward_model(model_dir, resolve_device(device), tokenizer.pad_token_id)
    return create_app(model, tokenizer, batch_size, limits, token_hashes, docs)


def reward_server(app: FastAPI, host: str, port: int) -> uvicorn.Server:
    """uvicorn leaving logging alone: its default `log_config` calls logging.config.dictConfig,
    which can deadlock against Prefect's API log handler inside a flow run (rlhf/flows/human_ranking.py)."""
    return uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", log_config=None))


def serve_reward_model(
    model_dir: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    device: str = "auto",
    batch_size: int = 64,
    limits: Limits = Limits(),
    token_hashes: dict[str, str] | None = None,
    docs: bool = False,
) -> None:
    """Serve the reward model in `model_dir` on http://host:port/get_reward until interrupted."""
    reward_server(load_reward_app(model_dir, device, batch_size, limits, token_hashes, docs), host, port).run()

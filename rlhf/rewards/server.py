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
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import torch
import uvicorn
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict
from transformers import PreTrainedTokenizerBase

from rlhf import chat
from rlhf.errors import InputError
from rlhf.models import load_tokenizer, resolve_device, use_fused_gelu
from rlhf.reward_models.ensemble import load_reward_model
from rlhf.scoring import ended, score_exchanges, score_texts

ROUTE = "/get_reward"


class RewardRequest(BaseModel):
    # Other tools send keys of their own ("labels", ...): accepted and ignored.
    model_config = ConfigDict(extra="allow")
    query: list[str]
    prompts: list[str] | None = None
    prompt_messages: list[Any] | None = None
    responses: list[str] | None = None


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


def create_app(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, batch_size: int = 64) -> FastAPI:
    """The server's app over a loaded reward model (tests build it around a tiny one)."""
    model = use_fused_gelu(
        model.requires_grad_(False).eval()
    )  # as rlhf.policy_optimization.rollout.RewardScorer reads it
    lock = threading.Lock()  # FastAPI runs sync routes on a thread pool; one forward at a time
    app = FastAPI(title="rlhf reward model")

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.post(ROUTE)
    def get_reward(request: RewardRequest) -> dict:
        try:
            with lock:
                rewards = request_scores(model, tokenizer, request, batch_size).tolist()
        except InputError as error:  # a malformed request: the caller's to fix, not to retry
            raise HTTPException(status_code=400, detail=str(error))
        return {"rewards": rewards, "scores": rewards}

    return app


def load_reward_app(model_dir: str | Path, device: str = "auto", batch_size: int = 64) -> FastAPI:
    """The app over the reward model (or ensemble) in `model_dir`, loaded as train_policy loads it."""
    tokenizer = load_tokenizer(model_dir)
    model = load_reward_model(model_dir, resolve_device(device), tokenizer.pad_token_id)
    return create_app(model, tokenizer, batch_size)


def reward_server(app: FastAPI, host: str, port: int) -> uvicorn.Server:
    """uvicorn leaving logging alone: its default `log_config` calls logging.config.dictConfig,
    which can deadlock against Prefect's API log handler inside a flow run (flows/human_ranking.py)."""
    return uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", log_config=None))


def serve_reward_model(
    model_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, device: str = "auto", batch_size: int = 64
) -> None:
    """Serve the reward model in `model_dir` on http://host:port/get_reward until interrupted."""
    reward_server(load_reward_app(model_dir, device, batch_size), host, port).run()

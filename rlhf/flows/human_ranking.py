"""The human-ranking deployment: serve the ranking page until people have ranked the queue.

The page (rlhf/annotation) runs in this flow run's process; the run's progress artifact shows how
much of the queue is done, and the run ends when nothing waits or after `timeout_s` (then it fails,
saying how many items were left). A paused pipeline run waiting at its human gate resumes by itself
once the queue is done.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import uvicorn
from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from rlhf.annotation.annotators import migration_message
from rlhf.annotation.app import create_app, load_tokens
from rlhf.annotation.guidelines import load_guidelines
from rlhf.config import load_params
from rlhf.flows.command_line import flow_arguments, flow_parser
from rlhf.flows.gates import waiting_items
from rlhf.store import FeedbackStore

PROGRESS_KEY = "human-ranking-progress"


class QueueNotDone(RuntimeError):
    """The serving window ended with items still waiting for people."""


def ranking_server(app, host: str, port: int) -> uvicorn.Server:
    """The page's server, leaving logging alone: uvicorn's default `log_config` calls
    `logging.config.dictConfig`, which inside a flow run can deadlock against Prefect's API log
    handler (it flushes under the logging lock that Prefect's event-loop thread is waiting for;
    seen as a hung test, FACTS.md)."""
    return uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", log_config=None))


@flow(name="rlhf-human-ranking")
def human_ranking(
    root: str = ".",
    tokens: str = "annotators.json",
    host: str = "127.0.0.1",
    port: int = 8765,
    timeout_s: float = 8 * 3600,
    poll_s: float = 10.0,
    overlap: int | None = None,
    guidelines: str | None = None,
    suggestions: bool = False,
) -> dict:
    """Serve the ranking page on host:port until people have ranked the annotation queue.

    Args:
        root: The project directory, whose params.yaml names the feedback store.
        tokens: A JSON file of annotators' tokens, stored hashed on start ("" for none); people
            also sign in with tokens from `rlhf annotate add-annotator`.
        host: The address the page listens on (127.0.0.1: this machine only).
        port: The page's port.
        timeout_s: Seconds to serve before the run fails with the items still waiting.
        poll_s: Seconds between looks at the queue (and updates of the progress artifact).
        overlap: People who rank each item; unset keeps the store's setting.
        guidelines: A markdown file shown beside the constitution on the page.
        suggestions: Start each ranking from the AI judge's order.
    """
    logger = get_run_logger()
    root_path = Path(root).resolve()
    params = load_params(root_path / "params.yaml")
    store_path = str(root_path / params.store.path)
    store = FeedbackStore(store_path)
    if overlap is not None:
        store.set_overlap(overlap)
    total = int(store.counts()["annotation_queue"])
    token_file = root_path / tokens if tokens else None
    file_tokens = load_tokens(token_file) if token_file and token_file.exists() else None
    page_guidelines = load_guidelines(params.rank_responses.principles, root_path / guidelines if guidelines else None)
    app = create_app(store, file_tokens, page_guidelines, suggestions, tokens_source=f"tokens-file:{tokens}")
    if file_tokens:
        logger.info(migration_message(token_file, app.state.tokens_added, len(file_tokens)))
    server = ranking_server(app, host, port)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    logger.info("ranking page on http://%s:%d/#token=<token>; %d items in the queue", host, port, total)
    progress = create_progress_artifact(progress=0.0, key=PROGRESS_KEY, description="share of the queue ranked")
    deadline = time.monotonic() + timeout_s
    try:
        while (waiting := waiting_items(store_path)) and time.monotonic() < deadline:
            update_progress_artifact(progress, progress=100.0 * (total - waiting) / max(total, 1))
            time.sleep(poll_s)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    update_progress_artifact(progress, progress=100.0 * (total - waiting) / max(total, 1))
    if waiting:
        raise QueueNotDone(f"the ranking page closed after {timeout_s:.0f}s with {waiting} of {total} items waiting")
    return {"items": total, "waiting": 0}


def main(argv: list[str] | None = None) -> None:
    parser = flow_parser(human_ranking, prog="python -m rlhf.flows.human_ranking", positional=("root",))
    print(human_ranking(**flow_arguments(human_ranking, parser, argv)))


if __name__ == "__main__":
    main()

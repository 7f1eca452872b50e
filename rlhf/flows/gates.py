"""Human-in-the-loop gates: the flow run pauses in the Prefect UI until people have done their part.

The human gate waits while the annotation queue has items nobody has ranked; it ends when the queue
is done (a watcher resumes the run) or when a reviewer presses Resume in the UI and answers the
form. The approval gate waits for a reviewer before PPO. Either gate that expires fails the run
with a message saying what was still waiting.
"""

from __future__ import annotations

import threading
from typing import Literal

from prefect import get_run_logger
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run, resume_flow_run
from prefect.input import RunInput
from prefect.runtime import flow_run

from rlhf.store import FeedbackStore


class GateTimeout(RuntimeError):
    """Nobody resumed a paused run before its gate's timeout."""


class GateRejected(RuntimeError):
    """A reviewer answered "stop" in the gate's form."""


class ReviewDecision(RunInput):
    """The form the Prefect UI shows on Resume."""

    decision: Literal["continue", "stop"] = "continue"
    note: str = ""


def waiting_items(store_path: str) -> int:
    return FeedbackStore(store_path).waiting_items()


def _resume_when_queue_done(run_id, store_path: str, stop: threading.Event, poll_s: float) -> None:
    while not stop.wait(poll_s):
        if waiting_items(store_path) == 0:
            resume_flow_run(run_id, run_input={"decision": "continue", "note": "annotation queue done"})
            return


def _pause(description: str, timeout_s: float) -> ReviewDecision:
    try:
        decision = pause_flow_run(wait_for_input=ReviewDecision, timeout=int(timeout_s), poll_interval=2)
    except FlowPauseTimeout:
        raise GateTimeout(f"{description}: nobody resumed the run within {timeout_s:.0f}s") from None
    if decision.decision == "stop":
        raise GateRejected(f"{description}: a reviewer stopped the run ({decision.note or 'no note'})")
    return decision


def human_gate(store_path: str, timeout_s: float, poll_s: float = 5.0) -> str | None:
    """Pause while people still have items to rank. Returns why the run went on, or None when
    nothing waited (then the run never paused)."""
    logger = get_run_logger()
    waiting = waiting_items(store_path)
    if waiting == 0:
        return None
    logger.info(
        "human gate: %d items wait at the ranking page (rlhf annotate serve); the run resumes when they are "
        "done or when a reviewer resumes it in the UI",
        waiting,
    )
    stop = threading.Event()
    watcher = threading.Thread(
        target=_resume_when_queue_done, args=(flow_run.get_id(), store_path, stop, poll_s), daemon=True
    )
    watcher.start()
    try:
        decision = _pause(f"human gate ({waiting} items waited for people)", timeout_s)
    except GateTimeout as error:
        left = waiting_items(store_path)
        raise GateTimeout(f"{error}; {left} items still wait for people") from None
    finally:
        stop.set()
    logger.info("human gate passed: %s", decision.note or "a reviewer resumed the run")
    return decision.note or "resumed by a reviewer"


def approval_gate(what: str, timeout_s: float) -> str:
    """Pause until a reviewer approves `what` in the UI."""
    get_run_logger().info("approval gate: waiting for a reviewer to approve %s in the Prefect UI", what)
    decision = _pause(f"approval before {what}", timeout_s)
    return decision.note or "approved"

"""One Prefect task per DVC stage: `dvc repro --single-item <stage>` in a subprocess.

DVC decides what is up to date (its API's status of the stage: the flow never reads DVC's log
wording), updates dvc.lock and skips unchanged stages; Prefect's own cache is off (NO_CACHE) so
the two never disagree. The stage writes its own exit status to a file (rlhf/stages/_stage.py), since
`dvc repro` exits 255 whatever the command's status. The stage's output streams into the task's
log, and its `<what>: done/total` lines move the flow's progress artifact.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import networkx as nx
import psutil
from dvc.repo import Repo
from dvc.stage import PipelineStage
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.tasks import exponential_backoff

from rlhf.config import PARAMS_FILE, ROUNDS_FILE, check_yaml_syntax
from rlhf.errors import STATUS_FILE_ENV, TRANSIENT_EXIT

PROGRESS_LINE = re.compile(r"\b(\d+)/(\d+)\b")
# Stages that call a judge over the network: retried with backoff when they exit TRANSIENT_EXIT.
RETRIED_STAGES = {"rank_responses"}


class TransientStageError(RuntimeError):
    """A stage failed in a way worth retrying (its judge endpoint timed out or kept failing)."""


def pipeline_stages(root: str | Path) -> list[PipelineStage]:
    """The stages of dvc.yaml in an order that runs every stage after the stages it depends on.

    Among stages free to run, dvc.yaml's own order decides, so the order is stable.
    """
    check_yaml_syntax(*(Path(root) / name for name in (PARAMS_FILE, ROUNDS_FILE, "dvc.yaml")))  # before DVC's trace
    repo = Repo(str(root))
    try:
        graph = repo.index.graph  # an edge points from a stage to a stage it depends on
        stages = [s for s in graph.nodes if isinstance(s, PipelineStage)]
        position = {stage.name: i for i, stage in enumerate(repo.index.stages) if isinstance(stage, PipelineStage)}
        dependency_first = graph.subgraph(stages).reverse(copy=True)
        return list(nx.lexicographical_topological_sort(dependency_first, key=lambda s: f"{position[s.name]:06d}"))
    finally:
        repo.close()


def up_to_date(root: str | Path, stage: str) -> bool:
    """DVC's status of this stage alone (its deps, params and outs against dvc.lock), read from
    `dvc status --json` (the in-process API assumes the working directory is the repository)."""
    result = subprocess.run(
        [sys.executable, "-m", "dvc", "status", "--json", stage],
        cwd=root,
        env=stage_environment(),
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        return result.returncode == 0 and json.loads(result.stdout or "{}") == {}
    except ValueError:
        raise RuntimeError(f"stage {stage}: dvc status --json gave no JSON: {result.stdout[-200:]!r}") from None


def command_exit(status_file: Path) -> int | None:
    """The exit status the stage wrote (rlhf/stages/_stage.py); None when it wrote none (killed, or not ours)."""
    try:
        return int(status_file.read_text())
    except (OSError, ValueError):
        return None


def stage_environment() -> dict[str, str]:
    """The stage subprocess's environment: this interpreter's tools first, quiet progress bars."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("TQDM_DISABLE", "1")  # carriage-return progress bars would flood the Prefect log
    env.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    run_id = flow_run.get_id()
    if run_id:
        env["RLHF_RUN_ID"] = f"prefect-{run_id}"
    return env


def only_transient_failures(task, task_run, state) -> bool:
    """Prefect's retry condition: retry a stage only when its judge endpoint was the trouble."""
    try:
        state.result()
    except TransientStageError:
        return True
    except Exception:
        return False
    return False


def kill_tree(pid: int) -> None:
    """SIGKILL a process and everything it started (dvc, the stage, torchrun's workers)."""
    with contextlib.suppress(psutil.NoSuchProcess):
        parent = psutil.Process(pid)
        for child in parent.children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        parent.kill()


def stage_progress(stage: str, line: str) -> float | None:
    """The share done that a stage's `<stage>...: done/total` line reports, if it is one."""
    if not line.startswith(stage):
        return None
    match = PROGRESS_LINE.search(line)
    if not match or int(match.group(2)) == 0:
        return None
    return min(int(match.group(1)) / int(match.group(2)), 1.0)


@task(cache_policy=NO_CACHE)
def reproduce_stage(
    root: str,
    stage: str,
    timeout_s: float,
    force: bool = False,
    on_progress: Callable[[str, float], None] | None = None,
) -> str:
    """Reproduce one stage through DVC; returns "ran" or "skipped" (up to date by DVC's status).

    Kills the stage (and everything it started) after `timeout_s` seconds. A non-zero exit raises,
    naming the stage: TransientStageError for TRANSIENT_EXIT (retried), RuntimeError otherwise.
    """
    logger = get_run_logger()
    started = time.perf_counter()
    if not force and up_to_date(root, stage):
        logger.info("stage %s skipped: DVC's status finds it up to date", stage)
        return "skipped"
    with tempfile.TemporaryDirectory(prefix="rlhf-stage-") as scratch:
        status_file = Path(scratch) / "exit"
        returncode, timed_out = _run_dvc_repro(root, stage, timeout_s, force, status_file, on_progress)
        exit_status = command_exit(status_file)
    if timed_out:
        raise TimeoutError(f"stage {stage} ran past its {timeout_s:.0f}s timeout and was stopped")
    if returncode and exit_status == TRANSIENT_EXIT:
        raise TransientStageError(f"stage {stage}: its judge endpoint failed (exit {exit_status}); see the log above")
    if returncode != 0:
        raise RuntimeError(
            f"stage {stage} failed (dvc repro exit {returncode}, the stage's {exit_status}); its log is above"
        )
    logger.info("stage %s ran in %.1f s", stage, time.perf_counter() - started)
    return "ran"


def _run_dvc_repro(
    root: str,
    stage: str,
    timeout_s: float,
    force: bool,
    status_file: Path,
    on_progress: Callable[[str, float], None] | None,
) -> tuple[int, bool]:
    """`dvc repro --single-item <stage>`, its output into the task's log; (exit status, timed out)."""
    logger = get_run_logger()
    command = [sys.executable, "-m", "dvc", "repro", "--single-item", stage] + (["--force"] if force else [])
    # The stage stays in the flow's process group: whatever kills the flow run (a worker cancelling
    # it, a SIGKILL of the group) kills the stage too, and no orphan keeps writing after it.
    env = {**stage_environment(), STATUS_FILE_ENV: str(status_file)}
    process = subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    timed_out = threading.Event()

    def kill_on_timeout() -> None:
        timed_out.set()
        kill_tree(process.pid)

    watchdog = threading.Timer(timeout_s, kill_on_timeout)
    watchdog.start()
    try:
        for line in process.stdout:
            line = line.rstrip()
            if not line:
                continue
            logger.info(line)
            share = stage_progress(stage, line)
            if share is not None and on_progress:
                on_progress(stage, share)
        returncode = process.wait()
    finally:
        watchdog.cancel()
    return returncode, timed_out.is_set()


def stage_task(stage: str, judge_retries: int, retry_delay_s: float):
    """The task for one stage, named after it; retried with exponential backoff where that helps."""
    if stage not in RETRIED_STAGES or judge_retries == 0:
        return reproduce_stage.with_options(name=stage)
    return reproduce_stage.with_options(
        name=stage,
        retries=judge_retries,
        retry_delay_seconds=exponential_backoff(backoff_factor=retry_delay_s)(judge_retries),
        retry_condition_fn=only_transient_failures,
    )

"""The RLHF pipeline as a Prefect flow over the DVC graph.

dvc.yaml is the pipeline; this flow adds orchestration around it: one Prefect task per stage in
DVC's topological order (rlhf/flows/stages.py), retries for the judge, a timeout per stage, a run
lock so two runs never write the feedback store at once, the human and approval
gates (rlhf/flows/gates.py), iterated rounds versioned by git + DVC (rlhf/flows/rounds.py), `dvc push`
after each round, and the artifacts the Prefect UI shows (rlhf/flows/artifacts.py).

A run killed mid-stage and started again skips the stages DVC finds up to date and finishes the
rest; the store's content-hash keys make the re-run of a half-done stage add no row twice.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml
from filelock import FileLock, Timeout
from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from rlhf.config import Params, load_params
from rlhf.errors import InputError
from rlhf.flows import artifacts, gates
from rlhf.flows.command_line import flow_arguments, flow_parser
from rlhf.flows.rounds import PREVIOUS_POLICY, commit_round, current_round, dvc_push, is_git_repo, start_next_round
from rlhf.flows.stages import pipeline_stages, stage_task

STORE_RUN_LOCK_SUFFIX = ".run.lock"  # held by a run for its whole length: one writing run at a time
HUMAN_JUDGES = {"human", "hybrid"}
GATE_AFTER = "store_comparisons"  # the queue is in the store once this stage has run
APPROVAL_BEFORE = "train_policy"


@contextmanager
def one_run_at_a_time(store_path: Path, wait_s: float) -> Iterator[None]:
    """Hold the store's run lock for the whole run, so two runs never write the store at once.

    A kernel file lock rather than a Prefect global concurrency limit: the kernel frees it when a
    run is killed, so the resumed run starts at once (a killed run's Prefect slot stayed taken on
    the temporary server, blocking the resume), and it also covers runs started outside Prefect.
    """
    lock = FileLock(str(store_path) + STORE_RUN_LOCK_SUFFIX)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        get_run_logger().info("another run is writing %s; waiting up to %.0fs for it to end", store_path, wait_s)
        try:
            lock.acquire(timeout=wait_s)
        except Timeout:
            raise RuntimeError(f"{store_path}: another run held the store for {wait_s:.0f}s; not started") from None
    try:
        yield
    finally:
        lock.release()


def artifact_paths(root: Path) -> dict[str, str]:
    """dvc.yaml's `paths` (its vars also load rounds.yaml, by name)."""
    entries = yaml.safe_load((root / "dvc.yaml").read_text())["vars"]
    return next(entry["paths"] for entry in entries if isinstance(entry, dict) and "paths" in entry)


def run_round(
    root: Path,
    stage_names: list[str],
    progress: artifacts.RunProgress,
    *,
    stage_timeout_s: float,
    judge_retries: int,
    judge_retry_delay_s: float,
    human_gate_timeout_s: float,
    approve_before_ppo: bool,
) -> dict[str, str]:
    """Every stage once, in order, with the gates where they belong; returns {stage: ran | skipped}."""
    params = load_params(root / "params.yaml")
    outcomes: dict[str, str] = {}
    for stage in stage_names:
        if stage == APPROVAL_BEFORE and approve_before_ppo:
            gates.approval_gate("PPO", human_gate_timeout_s)
        run = stage_task(stage, judge_retries, judge_retry_delay_s)
        outcomes[stage] = run(str(root), stage, stage_timeout_s, on_progress=progress.within_stage)
        progress.stage_finished()
        if stage == GATE_AFTER and params.rank_responses.judge in HUMAN_JUDGES:
            store_path = str(root / params.store.path)
            if gates.human_gate(store_path, human_gate_timeout_s) is not None:
                # People's rankings changed the store's scope file, a dependency: DVC re-runs the stage.
                outcomes[stage] = run(str(root), stage, stage_timeout_s)
    return outcomes


@flow(name="rlhf-pipeline")
def rlhf_pipeline(
    root: str = ".",
    rounds: int = 1,
    new_round: bool = False,
    approve_before_ppo: bool = False,
    human_gate_timeout_s: float = 24 * 3600,
    stage_timeout_s: float = 6 * 3600,
    judge_retries: int = 3,
    judge_retry_delay_s: float = 10.0,
    commit_rounds: bool = False,
    push: bool = True,
    store_wait_s: float = 6 * 3600,
) -> dict:
    """Run the stages of dvc.yaml through DVC, `rounds` times.

    The first round reproduces the workspace as it is (from the policy in rounds.yaml's
    `round.start_policy`); each further round, and the first one too with `new_round`, first makes
    the last trained policy the start. The command line (`python -m rlhf.flows.pipeline --help`)
    and the Prefect UI's form both take their options and descriptions from this signature and
    the Args below.

    Args:
        root: The project directory: the DVC repository whose dvc.yaml and params.yaml to run.
        rounds: Feedback rounds to run, one after another (at least 1).
        new_round: Start a new round from the last trained policy before the first round too.
        approve_before_ppo: Pause before train_policy until a reviewer approves in the Prefect UI.
        human_gate_timeout_s: Seconds a human gate (people's rankings, the approval) waits before the run fails.
        stage_timeout_s: Seconds one stage may run before it is stopped and the run fails.
        judge_retries: Times a judging stage is retried when its judge endpoint timed out or kept failing.
        judge_retry_delay_s: The first retry's delay in seconds; each later one waits twice as long.
        commit_rounds: Commit and tag every round in git (rlhf-round-N), so each round can be checked out.
        push: Run `dvc push` after every round when a DVC remote is set.
        store_wait_s: Seconds to wait for another run that holds the feedback store before not starting.

    Returns:
        {"rounds": [{"round", "stages", "tag"}], "stages": <last round's>, "metrics": [...], "pushed_to"}.
    """
    params = check_before_starting(root, rounds, commit_rounds)
    logger = get_run_logger()
    root_path = Path(root).resolve()
    stages = pipeline_stages(root_path)
    stage_names = [stage.name for stage in stages]
    paths = artifact_paths(root_path)
    progress = artifacts.RunProgress(stage_names, rounds)
    history = []
    store_path = root_path / params.store.path
    with one_run_at_a_time(store_path, store_wait_s):
        for index in range(rounds):
            if index > 0 or new_round:
                number = start_next_round(root_path, paths["policy"], paths["responses"])
                logger.info("round %d starts from %s", number, PREVIOUS_POLICY)
            number = current_round(root_path).number
            outcomes = run_round(
                root_path,
                stage_names,
                progress,
                stage_timeout_s=stage_timeout_s,
                judge_retries=judge_retries,
                judge_retry_delay_s=judge_retry_delay_s,
                human_gate_timeout_s=human_gate_timeout_s,
                approve_before_ppo=approve_before_ppo,
            )
            metrics = artifacts.publish(root_path, stages, paths, number)
            tag = commit_round(root_path, number, flow_run.get_name()) if commit_rounds else None
            # Every round's outputs go to the remote, not only the last round's: each tag stays pullable.
            pushed_to = dvc_push(root_path) if push else None
            logger.info(
                "round %d: %s%s; dvc push: %s",
                number,
                outcomes,
                f"; committed as {tag}" if tag else "",
                f"to remote {pushed_to!r}" if pushed_to else "no DVC remote set, nothing pushed",
            )
            history.append({"round": number, "stages": outcomes, "tag": tag})
    return {"rounds": history, "stages": history[-1]["stages"], "metrics": metrics, "pushed_to": pushed_to}


def summary(result: dict) -> str:
    lines = []
    for entry in result["rounds"]:
        lines += [
            "",
            f"round {entry['round']}" + (f" ({entry['tag']})" if entry["tag"] else ""),
            "stage               outcome",
        ]
        lines += [f"{stage:19} {outcome}" for stage, outcome in entry["stages"].items()]
    lines += ["", "metric                                    value"]
    lines += [f"{row['stage'] + '.' + row['metric']:41} {row['value']}" for row in result["metrics"]]
    return "\n".join(lines)


def check_before_starting(root: str, rounds: int, commit_rounds: bool) -> Params:
    """The run's params; InputError for what would stop the run before its first stage: the
    arguments, params.yaml."""
    if rounds < 1:
        raise InputError(f"rounds: must be at least 1 (got {rounds})")
    if commit_rounds and not is_git_repo(Path(root).resolve()):
        raise InputError(f"{Path(root).resolve()}: commit_rounds needs a git repository")
    return load_params(Path(root) / "params.yaml")


def main(argv: list[str] | None = None) -> None:
    parser = flow_parser(rlhf_pipeline, prog="python -m rlhf.flows.pipeline", positional=("root",))
    arguments = flow_arguments(rlhf_pipeline, parser, argv)
    try:
        # Before Prefect starts the flow: a flow run that fails logs the error with its traceback.
        given = inspect.signature(rlhf_pipeline.fn).bind(**arguments)
        given.apply_defaults()
        check_before_starting(given.arguments["root"], given.arguments["rounds"], given.arguments["commit_rounds"])
        result = rlhf_pipeline(**arguments)
    except InputError as error:  # bad params.yaml: the flow's log has the trace, the terminal one line
        print(f"rlhf-pipeline: error: {error}", file=sys.stderr)
        sys.exit(2)
    print(summary(result))


if __name__ == "__main__":
    main()

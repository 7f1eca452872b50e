"""Operating the pipeline: deployments on a real Prefect server, the gates, rounds, DVC remotes, resume.

The round tests share one shrunk repository judged by people: the test plays the annotators (the
store's API, as the ranking page calls it) and the reviewer (resume with run_input).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from tests.support.pipeline_repo import GIT_ENV, STAGES, dvc, make_repo, run

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def living_members_of_group(group_id: int, within_s: float) -> list[int]:
    """Pids still running in a process group, polled until none is left or the time is up.

    A killed process lingers as a zombie until its parent reaps it; where the container's init does not
    reap orphans (CI's does not), those zombies stay listed by `pgrep` although nothing runs, so they do
    not count. Freeing a large torch process also takes the kernel a moment, hence the polling.
    """
    deadline = time.monotonic() + within_s
    while True:
        living = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, pgrp
            except OSError:
                continue  # it ended while we looked
            if int(fields[2]) == group_id and fields[0] not in ("Z", "X"):
                living.append(int(stat.parent.name))
        if not living or time.monotonic() > deadline:
            return living
        time.sleep(0.5)


def test_ui_command_registers_the_deployments_and_the_schedule_produces_runs(project_root, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterDeploymentId,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.settings import PREFECT_API_URL, temporary_settings

    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_API_URL": api}
    ui = subprocess.Popen(
        [sys.executable, "-m", "rlhf.flows.ui", "--port", str(port), "--logs", str(tmp_path / "logs")],
        cwd=project_root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        assert "Prefect UI: http://127.0.0.1:" in ui.stdout.readline()  # printed once everything is registered
        with temporary_settings(updates={PREFECT_API_URL: api}), get_client(sync_client=True) as client:
            deployments = {d.name: d for d in client.read_deployments()}
            assert set(deployments) == {"scheduled-pipeline", "feedback-round", "human-ranking"}
            assert all(d.work_pool_name == "rlhf-local" for d in deployments.values())
            assert [s.schedule.cron for s in deployments["scheduled-pipeline"].schedules] == ["0 3 * * *"]
            assert deployments["feedback-round"].parameters == {"rounds": 1, "new_round": True, "commit_rounds": True}
            scheduled_filter = FlowRunFilter(
                deployment_id=FlowRunFilterDeploymentId(any_=[deployments["scheduled-pipeline"].id]),
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])),
            )
            deadline, scheduled = time.monotonic() + 60, []
            while time.monotonic() < deadline and not scheduled:
                scheduled = client.read_flow_runs(flow_run_filter=scheduled_filter)
                time.sleep(1)
            assert scheduled, "the cron schedule produced no flow run"
            assert [p.name for p in client.read_work_pools()] == ["rlhf-local"]
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(timeout=60)
    time.sleep(1)
    assert (
        subprocess.run(["pgrep", "-f", "--", f"--port {port}"], capture_output=True).returncode == 1
    )  # children stopped


# DVC's log lines reworded in every DVC process the flow starts: the flow must not read them.
REWORD_DVC_LOG = """
import logging
_format = logging.Handler.format
def format(self, record):
    text = _format(self, record)
    return text.replace("didn't change, skipping", "is as before").replace("exited with", "ended with status")
logging.Handler.format = format
"""


def test_a_judge_endpoint_failure_is_retried_and_a_stage_past_its_timeout_is_stopped(
    prefect_harness, tmp_path, monkeypatch
):
    """Skip, retry and failure come from DVC's status and the stage's own exit status, whatever
    DVC's log lines say (they are reworded here)."""
    from prefect import flow

    from rlhf.flows.stages import TransientStageError, stage_task

    (tmp_path / "fail_once.py").write_text(
        "import pathlib\n"
        "from rlhf.errors import JudgeEndpointError\n"
        "from rlhf.stages._stage import run_stage\n"
        "def body():\n"
        "    mark = pathlib.Path('tried')\n"
        "    if not mark.exists():\n"
        "        mark.write_text('1')\n"
        "        raise JudgeEndpointError('the judge timed out')\n"
        "    pathlib.Path('out').write_text('ok')\n"
        "run_stage('rank_responses', body)\n"
    )
    (tmp_path / "site" / "sitecustomize.py").parent.mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(REWORD_DVC_LOG)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")]))

    (tmp_path / "dvc.yaml").write_text(
        yaml.safe_dump(
            {
                "stages": {
                    "rank_responses": {
                        "cmd": f"{sys.executable} fail_once.py",
                        "deps": ["fail_once.py"],
                        "outs": ["out"],
                    },
                    "train_policy": {"cmd": "sleep 37.3", "deps": ["fail_once.py"]},
                    "evaluate": {"cmd": "exit 3"},
                }
            }
        )
    )
    run(["git", "init", "-q"], tmp_path)
    dvc("init", "-q", cwd=tmp_path)
    reworded = run([sys.executable, "-m", "dvc", "repro", "--single-item", "evaluate"], tmp_path, check=False)
    assert "ended with status 3" in reworded.stderr and "exited with" not in reworded.stderr, reworded.stderr

    @flow
    def one_stage(stage: str, retries: int, timeout_s: float) -> str:
        return stage_task(stage, retries, 0.1)(str(tmp_path), stage, timeout_s)

    with pytest.raises(TransientStageError, match="stage rank_responses: its judge endpoint failed"):
        one_stage("rank_responses", 0, 60)
    (tmp_path / "tried").unlink()
    assert one_stage("rank_responses", 2, 60) == "ran"  # failed once, retried, went on
    assert (tmp_path / "out").read_text() == "ok"
    assert one_stage("rank_responses", 2, 60) == "skipped"  # up to date, by DVC's status
    (tmp_path / "fail_once.py").write_text("raise SystemExit(75)\n")  # not through run_stage: no exit status written
    with pytest.raises(RuntimeError, match=r"stage rank_responses failed \(dvc repro exit 255, the stage's None\)"):
        one_stage("rank_responses", 2, 60)  # final, not retried
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="stage train_policy ran past its 2s timeout and was stopped"):
        one_stage("train_policy", 0, 2)
    assert time.monotonic() - started < 20
    # An odd duration: pgrep -f matches substrings, and any "sleep 300" elsewhere would match "sleep 30".
    assert subprocess.run(["pgrep", "-f", "--", "sleep 37.3"], capture_output=True).returncode == 1


# --- rounds with people in the loop -----------------------------------------------------------------


@pytest.fixture(scope="module")
def human_repo(tmp_path_factory, project_root):
    root = make_repo(
        tmp_path_factory.mktemp("human") / "repo",
        project_root,
        {"rank_responses": {"judge": "human"}, "collect_prompts": {"max_prompts": 24}},
    )
    remote = tmp_path_factory.mktemp("dvc-remote")
    dvc("remote", "add", "-d", "storage", str(remote), cwd=root)
    run(["git", "commit", "-qam", "a DVC remote"], root)
    return root


def rank_every_queued_item(store_path: Path) -> int:
    """What people do at the ranking page: rank each waiting item (here: longest response first)."""
    from rlhf.store import FeedbackStore

    store, ranked = FeedbackStore(store_path), 0
    while item := store.next_item("tester"):
        order = sorted(item["responses"], key=lambda r: (-len(r["text"]), r["response_id"]))
        ranks = {r["response_id"]: position + 1 for position, r in enumerate(order)}
        store.record_human_ranking("tester", item["item_id"], ranks, [], "test-annotators")
        ranked += 1
    return ranked


def drive(run_flow, store_path: Path, timeout_s: float = 900) -> tuple[dict, list[str]]:
    """Run a flow in a thread; at each pause, play people (queue waiting) or the reviewer (approve)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType
    from prefect.flow_runs import resume_flow_run

    result, error, actions = {}, [], []
    thread = threading.Thread(target=lambda: _capture(run_flow, result, error), daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while thread.is_alive() and time.monotonic() < deadline:
        with get_client(sync_client=True) as client:
            paused = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))
                )
            )
        for flow_run in paused:
            ranked = rank_every_queued_item(store_path)
            if ranked:
                actions.append(f"ranked {ranked}")  # the gate's watcher sees the queue done and resumes
                time.sleep(8)
            else:
                resume_flow_run(flow_run.id, run_input={"decision": "continue", "note": "approved by the test"})
                actions.append("approved")
                time.sleep(3)
        time.sleep(1)
    thread.join(timeout=5)
    assert not thread.is_alive(), "the flow did not finish in time"
    if error:
        raise error[0]
    return result["value"], actions


def _capture(run_flow, result, error):
    try:
        result["value"] = run_flow()
    except BaseException as exc:
        error.append(exc)


@pytest.fixture(scope="module")
def two_rounds(human_repo, prefect_harness):
    from rlhf.flows.pipeline import rlhf_pipeline

    os.environ.update(GIT_ENV)
    return drive(
        lambda: rlhf_pipeline(str(human_repo), rounds=2, commit_rounds=True, approve_before_ppo=True),
        human_repo / "feedback.duckdb",
    )


def test_human_gate_waits_for_people_and_approval_gate_for_a_reviewer(two_rounds, human_repo):
    result, actions = two_rounds
    assert [entry["round"] for entry in result["rounds"]] == [1, 2]
    # Each round: people rank the queue (the watcher resumes), then the reviewer approves PPO.
    assert [a.split()[0] for a in actions] == ["ranked", "approved", "ranked", "approved"]
    feedback = json.loads((human_repo / "metrics" / "feedback.json").read_text())
    assert feedback["queue_waiting"] == 0 and feedback["snapshot_comparisons"] > 0


def test_two_rounds_are_versioned_and_compared_by_dvc_metrics_diff(two_rounds, human_repo):
    from rlhf.store import FeedbackStore

    result, _ = two_rounds
    assert [entry["tag"] for entry in result["rounds"]] == ["rlhf-round-1", "rlhf-round-2"]
    state = yaml.safe_load((human_repo / "rounds.yaml").read_text())["round"]
    assert {k: state[k] for k in ("number", "start_policy")} == {"number": 2, "start_policy": "models/previous-policy"}
    assert [r["number"] for r in state["earlier"]] == [1]
    # the round state has its own file: params.yaml is byte for byte what the user committed
    committed = run(["git", "show", "rlhf-round-1~1:params.yaml"], human_repo).stdout
    assert (human_repo / "params.yaml").read_text() == committed
    assert run(["git", "diff", "rlhf-round-1~1", "rlhf-round-2", "--", "params.yaml"], human_repo).stdout == ""
    store = FeedbackStore(human_repo / "feedback.duckdb")
    policies = store.query("SELECT count(DISTINCT policy_checkpoint) AS n FROM responses")["n"].iloc[0]
    assert policies == 2  # round 2 sampled from round 1's policy; both rounds' rows are kept
    assert set(result["rounds"][1]["stages"].values()) == {"ran", "skipped"}
    assert result["rounds"][1]["stages"]["bootstrap_policy"] == "skipped"
    diff = json.loads(dvc("metrics", "diff", "rlhf-round-1", "rlhf-round-2", "--json", cwd=human_repo).stdout)
    kl = diff["metrics/eval.json"]["kl_to_start"]  # both rounds measured against the same SFT reference
    assert kl["new"] > 0 and kl["old"] > 0 and kl["new"] != kl["old"]
    assert (
        diff["metrics/feedback.json"]["snapshot_comparisons"]["new"]
        > diff["metrics/feedback.json"]["snapshot_comparisons"]["old"]
    )


def test_dvc_push_then_pull_in_a_fresh_clone_restores_a_past_round(two_rounds, human_repo, tmp_path):
    result, _ = two_rounds
    assert result["pushed_to"] == "storage"
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(human_repo), str(clone)], tmp_path)
    run(["git", "checkout", "-q", "rlhf-round-1"], clone)
    dvc("pull", "--quiet", cwd=clone)
    assert json.loads(dvc("status", "--json", cwd=clone).stdout or "{}") == {}
    lock = yaml.safe_load((clone / "dvc.lock").read_text())
    assert "models/policy" in [out["path"] for out in lock["stages"]["train_policy"]["outs"]]
    assert (clone / "models" / "policy" / "model.safetensors").exists()
    assert (clone / "data" / "comparisons" / "pairs.parquet").exists()


def test_a_run_killed_mid_stage_resumes_without_redoing_stages_or_duplicating_rows(two_rounds, human_repo):
    from rlhf.store import FeedbackStore

    params_path = human_repo / "params.yaml"
    params = yaml.safe_load(params_path.read_text())
    params["rank_responses"]["judge"] = "rules"  # no gate: the run goes straight through
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, **GIT_ENV, "PREFECT_HOME": str(human_repo.parent / "prefect-home")}
    env.pop("PREFECT_API_URL", None)  # the subprocess starts its own temporary server
    command = [sys.executable, "-m", "rlhf.flows.pipeline", str(human_repo)]
    process = subprocess.Popen(
        command,
        cwd=human_repo,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    seen = []
    for line in process.stdout:
        seen.append(line)
        if "Running stage 'train_reward'" in line:
            os.killpg(process.pid, signal.SIGKILL)  # the flow, its `dvc repro` and the stage: one process group
            break
    process.wait()
    assert "Running stage 'train_reward'" in seen[-1], "".join(seen[-40:])
    # nothing of the killed run's process group survives (other pipelines on the machine may be training)
    assert living_members_of_group(process.pid, within_s=30) == []
    store = FeedbackStore(human_repo / "feedback.duckdb")
    counts_at_kill = store.counts()
    finished = run(command, human_repo, env=env).stdout
    outcomes = dict(line.split() for line in finished.splitlines() if line.split()[:1] and line.split()[0] in STAGES)
    assert [s for s in STAGES if outcomes[s] == "skipped"] == STAGES[:5]  # done before the kill
    assert [s for s in STAGES if outcomes[s] == "ran"] == ["train_reward", "train_cost", "train_policy", "evaluate"]
    assert {t: n for t, n in store.counts().items() if t != "runs"} == {
        t: n for t, n in counts_at_kill.items() if t != "runs"
    }


def test_an_expired_human_gate_fails_the_run_saying_what_still_waits(prefect_harness, tmp_path):
    import pandas as pd
    from prefect import flow

    from rlhf.flows.gates import GateTimeout, human_gate
    from rlhf.store import FeedbackStore

    store = FeedbackStore(tmp_path / "feedback.duckdb")
    prompts = pd.DataFrame([{"prompt_id": "p", "prompt": "q", "topic": None, "split": "train", "source": "t"}])
    responses = pd.DataFrame(
        [
            {
                "response_id": f"r{i}",
                "prompt_id": "p",
                "sample_index": i,
                "response": f"a{i}",
                "policy_checkpoint": "c",
                "sampling": "{}",
            }
            for i in range(2)
        ]
    )
    rankings = pd.DataFrame(
        columns=["ranking_id", "response_id", "prompt_id", "rank", "score", "reasons", "judge", "judge_version"]
    )
    queue = pd.DataFrame([{"item_id": "i", "prompt_id": "p", "response_ids": '["r0", "r1"]', "reason": "human"}])
    store.ingest({"run_id": "run-1", "stage": "test"}, prompts, responses, rankings, queue)

    @flow
    def gated() -> str:
        return human_gate(str(store.path), timeout_s=3, poll_s=1)

    with pytest.raises(GateTimeout, match=r"nobody resumed the run within 3s; 1 items still wait for people"):
        gated()


def test_a_second_run_waits_for_the_store_while_a_first_holds_it(prefect_harness, tmp_path):
    from prefect import flow

    from rlhf.flows.pipeline import one_run_at_a_time

    store = tmp_path / "feedback.duckdb"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from filelock import FileLock; import time\n"
            f"with FileLock({str(store) + '.run.lock'!r}):\n    print('held', flush=True); time.sleep(4)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"

    @flow
    def writer(wait_s: float) -> float:
        started = time.monotonic()
        with one_run_at_a_time(store, wait_s):
            return time.monotonic() - started

    with pytest.raises(RuntimeError, match=r"another run held the store for 1s; not started"):
        writer(1)
    assert writer(60) > 1  # got the lock once the first run ended
    holder.wait()


def ephemeral_startup_timeout(project_root: Path, env: dict[str, str]) -> str:
    """Prefect's ephemeral-server startup timeout as a process that imports our flows sees it."""
    check = (
        "import rlhf.flows.pipeline\n"
        "from prefect.settings import get_current_settings\n"
        "print(get_current_settings().server.ephemeral.startup_timeout_seconds)\n"
    )
    command = [sys.executable, "-c", check]
    result = subprocess.run(command, check=True, cwd=project_root, env=env, capture_output=True, text=True, timeout=120)
    return result.stdout.strip()


def test_a_flow_gives_prefects_temporary_server_two_minutes_to_start(project_root):
    """20 s (Prefect's default) was too short on a busy 2-core machine; a user's own value wins."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"}
    assert ephemeral_startup_timeout(project_root, env) == "120"
    assert (
        ephemeral_startup_timeout(project_root, {**env, "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "45"})
        == "45"
    )

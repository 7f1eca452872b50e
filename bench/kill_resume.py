"""Kill and resume: SIGKILL the whole Prefect flow at random moments, each time with new work, then
finish; count the store's rows lost or doubled and compare the final snapshot with an uninterrupted
run's (issue 27).

Each kill lands at a random moment: a stage drawn at random, then a random delay into it (a
uniform moment over the whole run would land mostly in the flow's start-up). Each round asks for
more prompts (collect_prompts.max_prompts grows), so every run has new responses, rankings and
training to do when it is killed. After the kills a run finishes; then a
fresh clone of the same commit runs uninterrupted from an empty store. Rows lost or doubled are
counted on the store's content keys (a ranking's judge, prompt and responses; a pair's ranking and
ids): the killed store must hold exactly the rankings of the configurations whose rank_responses
finished, once each, and its final snapshot (data/comparisons) must equal the uninterrupted one's.

    .venv/bin/python bench/kill_resume.py --kills 10

Prints one JSON line with the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from rlhf.machine import machine
from tests.support.pipeline_repo import GIT_ENV, STAGES, make_repo, run

PROJECT = Path(__file__).resolve().parent.parent
SHRUNK = {"bootstrap_policy": {"steps": 40}, "collect_prompts": {"max_prompts": 8}}


def flow_command(repo: Path) -> tuple[list[str], dict]:
    env = {**os.environ, **GIT_ENV, "PREFECT_HOME": str(repo.parent / "prefect-home")}
    env.pop("PREFECT_API_URL", None)  # each run starts Prefect's temporary server
    return [sys.executable, "-m", "rlhf.flows.pipeline", str(repo)], env


def set_max_prompts(repo: Path, count: int) -> None:
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params["collect_prompts"]["max_prompts"] = count
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def killed_run(repo: Path, stage: str, delay_s: float) -> str:
    """Start the flow and SIGKILL its process group `delay_s` seconds after `stage` starts (or when
    the flow ends first); returns where the kill landed."""
    command, env = flow_command(repo)
    process = subprocess.Popen(
        command, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    last = "flow start"
    for line in process.stdout:
        if "Running stage '" in line:
            last = line.split("Running stage '")[1].split("'")[0]
            if last == stage:
                time.sleep(delay_s)
                break
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    return last if process.returncode == -signal.SIGKILL else f"ended ({process.returncode}) before {stage}"


# Each table's key: a row doubled is a second row with the same key.
KEYS = {
    "prompts": "prompt_id",
    "responses": "response_id",
    "rankings": "ranking_id, response_id",
    "comparisons": "ranking_id, chosen_id, rejected_id",
}


def store_counts(repo: Path) -> dict:
    """{table: rows} and {table_doubled: rows beyond the first with their key}."""
    from rlhf.store import FeedbackStore

    store = FeedbackStore(repo / "feedback.duckdb")
    counts = {}
    for table, key in KEYS.items():
        frame = store.query(f"SELECT count(*) AS n, count(DISTINCT ({key})) AS distinct_n FROM {table}")
        counts[table] = int(frame["n"].iloc[0])
        counts[f"{table}_doubled"] = int(frame["n"].iloc[0] - frame["distinct_n"].iloc[0])
    return counts


def comparisons_md5(repo: Path) -> str:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return next(o["md5"] for o in lock["stages"]["store_comparisons"]["outs"] if o["path"] == "data/comparisons")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--max-delay-s", type=float, default=5.0, help="a kill comes up to this long into its stage")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    draw = random.Random(args.seed)
    scratch = Path(tempfile.mkdtemp(prefix="rlhf-kill-"))
    repo = make_repo(scratch / "repo", PROJECT, SHRUNK)
    started = time.perf_counter()
    kills = []
    for i in range(args.kills):
        set_max_prompts(repo, 8 + 2 * (i + 1))  # new work: two more prompts than the last round asked for
        # A moment drawn at random: a stage that has work this round (every one after collect_prompts;
        # bootstrap_policy until it first finishes), then a delay into it.
        stage, delay = draw.choice(STAGES[1:]), draw.uniform(0.0, args.max_delay_s)
        kills.append({"stage": stage, "delay_s": round(delay, 1), "landed": killed_run(repo, stage, delay)})
        print(json.dumps({"kill": i + 1, **kills[-1]}), file=sys.stderr, flush=True)
    command, env = flow_command(repo)
    run(command, repo, env=env)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "after the kills"], repo)
    killed = store_counts(repo)

    clone = scratch / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], scratch)
    command, env = flow_command(clone)
    run(command, clone, env=env)  # uninterrupted, from an empty store
    fresh = store_counts(clone)
    # The killed store also holds the rankings of earlier configurations whose rank_responses finished;
    # the snapshot's scope (store.snapshot.rankings: current) takes only this configuration's.
    print(
        json.dumps(
            {
                "bench": "kill_resume",
                "kills": len(kills),
                "killed_in": [k["landed"] for k in kills],
                "rows_doubled": {table: killed[f"{table}_doubled"] for table in KEYS},
                "store_rows_after_kills": {table: killed[table] for table in KEYS},
                "store_rows_uninterrupted": {table: fresh[table] for table in KEYS},
                "snapshot_same_as_uninterrupted": comparisons_md5(repo) == comparisons_md5(clone),
                "wall_s": round(time.perf_counter() - started, 1),
                "machine": machine(),
            }
        )
    )


if __name__ == "__main__":
    main()

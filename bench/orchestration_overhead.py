"""What Prefect and DVC cost: the demo's stages run directly, then through the flow, in one invocation.

    python bench/orchestration_overhead.py [--shrink]

Copies the project twice into fresh git + DVC repositories. The baseline runs each stage's
command (as dvc.yaml renders it) one after another with nothing around it; the other runs
`python -m rlhf.flows.pipeline` (Prefect's temporary server, one task per stage, `dvc repro` of each
stage with its hashing and dvc.lock, artifacts). `--shrink` uses the test suite's small config:
the fixed costs weigh more there, so its share is an upper bound for the default's.

Prefect creates its database the first time a home is used (`make demo`'s first run on a
machine); every later run finds it. So the flow runs with a Prefect home that one trivial flow
has already set up, and that first set-up is timed on its own (`prefect_home_setup_s`): add it
to flow_s for a machine's very first run.

This 2-core machine's speed drifts by several percent from minute to minute, as much as the
overhead itself: `--repeats N` (default 2) runs the two sides alternately N times, each in a
fresh repository, and keeps each side's fastest run (as timeit does). Prints one JSON line;
target: overhead_share <= 0.10.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rlhf.machine import machine
from tests.support.pipeline_repo import make_repo


def stage_commands(root: Path) -> list[tuple[str, str]]:
    from rlhf.flows.stages import pipeline_stages

    return [(stage.name, stage.cmd) for stage in pipeline_stages(root)]


def environment() -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "TQDM_DISABLE": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "TOKENIZERS_PARALLELISM": "false",
    }


# The flow logs "stage <name> ran in <s> s" for each stage (rlhf/flows/stages.py).
STAGE_TIME = re.compile(r"stage (\w+) (?:ran|skipped) in ([\d.]+) s")


def run_direct(root: Path) -> tuple[float, dict[str, float]]:
    started, stage_s = time.perf_counter(), {}
    for name, command in stage_commands(root):
        stage_started = time.perf_counter()
        result = subprocess.run(
            command, shell=True, cwd=root, env=environment(), capture_output=True, text=True, check=False
        )
        if result.returncode:
            raise SystemExit(f"stage {name} failed:\n{result.stderr}")
        stage_s[name] = time.perf_counter() - stage_started
    return time.perf_counter() - started, stage_s


def prefect_environment(prefect_home: Path) -> dict[str, str]:
    env = {**environment(), "PREFECT_HOME": str(prefect_home)}
    env.pop("PREFECT_API_URL", None)
    return env


def set_up_prefect_home(prefect_home: Path) -> float:
    """What a Prefect home's first use costs beyond a later one: a trivial flow, run twice."""
    command = [sys.executable, "-c", "from prefect import flow; flow(lambda: None, name='warm-up')()"]
    seconds = []
    for _ in range(2):
        started = time.perf_counter()
        subprocess.run(command, env=prefect_environment(prefect_home), capture_output=True, check=True)
        seconds.append(time.perf_counter() - started)
    return seconds[0] - seconds[1]


def run_flow(root: Path, prefect_home: Path) -> tuple[float, dict[str, float]]:
    env = prefect_environment(prefect_home)
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "rlhf.flows.pipeline", str(root)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode:
        raise SystemExit(f"the flow failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    elapsed = time.perf_counter() - started
    return elapsed, {name: float(s) for name, s in STAGE_TIME.findall(result.stdout + result.stderr)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shrink", action="store_true", help="the test suite's small config")
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs of each side; fastest kept")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        import tests.support.pipeline_repo as pipeline_repo

        if not args.shrink:
            pipeline_repo.SHRINK = {}
        setup_s = set_up_prefect_home(tmp / "prefect-home")
        direct_runs, flow_runs = [], []
        for repeat in range(args.repeats):
            direct_runs.append(run_direct(make_repo(tmp / f"direct-{repeat}", ROOT)))
            flow_runs.append(run_flow(make_repo(tmp / f"flow-{repeat}", ROOT), tmp / "prefect-home"))
        fastest = [min(runs, key=lambda run: run[0]) for runs in (direct_runs, flow_runs)]
        (direct_s, direct_stages), (flow_s, flow_stages) = fastest
    print(
        json.dumps(
            {
                "bench": "orchestration_overhead",
                "machine": machine(),
                "config": "shrunk" if args.shrink else "default",
                "repeats": args.repeats,
                "all_direct_s": [round(r[0], 1) for r in direct_runs],
                "all_flow_s": [round(r[0], 1) for r in flow_runs],
                "direct_s": round(direct_s, 1),
                "flow_s": round(flow_s, 1),
                "ratio": round(flow_s / direct_s, 3),
                "overhead_share": round((flow_s - direct_s) / flow_s, 3),
                "prefect_home_setup_s": round(setup_s, 1),
                "first_run_overhead_share": round((flow_s + setup_s - direct_s) / (flow_s + setup_s), 3),
                # Per stage: [run directly, its task in the flow (dvc repro and all)]; the flow's remainder is
                # Prefect's start, the stage graph, the gates and the artifacts.
                "stages_s": {
                    name: [round(s, 1), round(flow_stages.get(name, float("nan")), 1)]
                    for name, s in direct_stages.items()
                },
            }
        )
    )


if __name__ == "__main__":
    main()

"""One command for the Prefect UI: a local server, a work pool, a worker, and the deployments.

    python -m rlhf.flows.ui [--port 4200]          # or: make ui

starts `prefect server` on 127.0.0.1, creates the `rlhf-local` process work pool, registers the
deployments of prefect.yaml, and runs a worker until Ctrl-C.
With `--server URL` it uses a running Prefect server instead of starting one.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

WORK_POOL = "rlhf-local"
ROOT = Path(__file__).resolve().parents[2]


def prefect(*args: str) -> list[str]:
    return [sys.executable, "-m", "prefect", *args]


def wait_healthy(api_url: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{api_url}/health", timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    raise SystemExit(f"rlhf.flows.ui: the Prefect server at {api_url} did not answer within {timeout_s:.0f}s")


def environment(api_url: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PREFECT_API_URL=api_url,
        PREFECT_UI_API_URL=api_url,  # without it the UI of a server on another port calls :4200
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PATH=str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", ""),
    )
    return env


def register(env: dict[str, str], root: Path) -> None:
    """The work pool and every deployment of prefect.yaml."""
    pool = subprocess.run(
        prefect("work-pool", "create", WORK_POOL, "--type", "process", "--overwrite"),
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if pool.returncode:
        raise SystemExit(
            f"rlhf.flows.ui: cannot create work pool {WORK_POOL}: {pool.stderr.strip() or pool.stdout.strip()}"
        )
    deploy = subprocess.run(
        prefect("--no-prompt", "deploy", "--all"), cwd=root, env=env, capture_output=True, text=True, check=False
    )
    if deploy.returncode:
        raise SystemExit(f"rlhf.flows.ui: prefect deploy failed:\n{deploy.stdout}\n{deploy.stderr}")


@contextlib.contextmanager
def started(command: list[str], env: dict[str, str], root: Path, log: Path) -> Iterator[subprocess.Popen]:
    """A child process that is stopped (with its children) when the block ends."""
    with log.open("a") as handle:
        process = subprocess.Popen(
            command, cwd=root, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m rlhf.flows.ui", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=4200, help="port of the local server (default: 4200)")
    parser.add_argument("--server", help="API URL of a running Prefect server to use instead (…/api)")
    parser.add_argument("--root", default=str(ROOT), help="the project directory (default: this checkout)")
    parser.add_argument("--logs", default=".prefect-ui", help="directory for the server and worker logs")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop the children on `kill` too
    root = Path(args.root).resolve()
    logs = root / args.logs
    logs.mkdir(exist_ok=True)
    api_url = args.server or f"http://127.0.0.1:{args.port}/api"
    env = environment(api_url)
    with contextlib.ExitStack() as stack:
        if not args.server:
            server = prefect("server", "start", "--host", "127.0.0.1", "--port", str(args.port))
            stack.enter_context(started(server, env, root, logs / "server.log"))
        wait_healthy(api_url)
        register(env, root)
        worker = stack.enter_context(
            started(prefect("worker", "start", "--pool", WORK_POOL), env, root, logs / "worker.log")
        )
        ui = api_url.removesuffix("/api")
        print(f"Prefect UI: {ui}  (deployments of prefect.yaml on work pool {WORK_POOL}; logs in {logs})", flush=True)
        print("Ctrl-C stops the worker" + ("" if args.server else " and the server"), flush=True)
        try:
            worker.wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()

"""What every stage shares: argument parsing, params, run provenance, outputs, one-line errors."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from rlhf.config import Params, load_params
from rlhf.errors import STATUS_FILE_ENV, TRANSIENT_EXIT, InputError, JudgeEndpointError, TrainingStopped
from rlhf.user_inputs import stage_inputs, sync_links

# Errors that mean bad input, not a bug: print one line naming the file or key, exit 2.
USER_ERRORS = (InputError, FileNotFoundError)


def parse_paths(stage: str, inputs: list[str], outputs: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=f"python -m rlhf.stages.{stage}", description=f"The {stage} stage (see dvc.yaml)."
    )
    parser.add_argument("--params", default="params.yaml", help="the params file (default: params.yaml)")
    parser.add_argument(
        "--user_inputs", help="input: the directory of links to the files params.yaml names (rlhf/user_inputs.py)"
    )
    parser.set_defaults(stage=stage)
    for name in inputs:
        parser.add_argument(f"--{name}", required=True, help=f"input: {name.replace('_', ' ')}")
    for name in outputs:
        parser.add_argument(f"--{name}", required=True, help=f"output: {name.replace('_', ' ')}")
    return parser.parse_args()


def run_stage(stage: str, body: Callable[[], None]) -> None:
    """Run a stage body; bad input becomes one line on stderr and exit status 2. The exit status
    also goes to the file $RLHF_STAGE_STATUS_FILE names, if set (a crash: 1)."""
    code = 1
    try:
        _run_stage(stage, body)
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
        raise
    finally:
        if status_file := os.environ.get(STATUS_FILE_ENV):
            Path(status_file).write_text(f"{code}\n")


def _run_stage(stage: str, body: Callable[[], None]) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    started = time.time()
    try:
        body()
    except JudgeEndpointError as error:
        print(f"{stage}: error: {error}", file=sys.stderr)
        sys.exit(TRANSIENT_EXIT)
    except USER_ERRORS as error:
        print(f"{stage}: error: {error}", file=sys.stderr)
        sys.exit(2)
    except TrainingStopped as error:
        print(f"{stage}: stopped: {error}", file=sys.stderr)
        sys.exit(3)
    print(f"{stage}: done in {time.time() - started:.1f}s", flush=True)


def params_from(args: argparse.Namespace) -> Params:
    """The stage's params; a stage that reads files params.yaml names (its --user_inputs directory,
    a dep in dvc.yaml) first brings that directory's links in step with them (rlhf/user_inputs.py)."""
    params = load_params(args.params)
    if getattr(args, "user_inputs", None):
        sync_links(args.user_inputs, stage_inputs(params, args.stage))
    return params


def run_info(stage: str) -> dict:
    """Provenance of this invocation: the flow run that drives it (if any) and the git revision."""
    run_id = os.environ.get("RLHF_RUN_ID") or f"local-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    try:
        git_rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        git_rev = None
    lock = Path("dvc.lock")
    dvc_rev = hashlib.sha256(lock.read_bytes()).hexdigest()[:16] if lock.exists() else None
    return {"run_id": run_id, "stage": stage, "git_rev": git_rev, "dvc_rev": dvc_rev}


def write_whole(path: str | Path, write: Callable[[Path], None]) -> None:
    """An output appears whole or not at all: written under a temporary name, then renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    write(partial)
    partial.replace(path)


def write_dir_whole(out_dir: Path, write: Callable[[Path], dict]) -> dict:
    """A directory output appears whole or not at all: `write` fills a temporary directory beside
    `out_dir`, which is then renamed into place; on any failure the temporary directory is removed
    and `out_dir` is left as it was. Returns what `write` returns."""
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    try:
        result = write(partial)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    shutil.rmtree(out_dir, ignore_errors=True)
    partial.rename(out_dir)
    return result


def write_json(path: str | Path, data: dict) -> None:
    write_whole(path, lambda p: p.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n"))


def write_parquet(frame, path: str | Path) -> None:
    write_whole(path, lambda p: frame.to_parquet(p, index=False))


def log_progress(label: str) -> Callable[[int, int], None]:
    def report(done: int, total: int) -> None:
        print(f"{label}: {done}/{total}", flush=True)

    return report

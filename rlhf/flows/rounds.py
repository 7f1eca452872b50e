"""Iterated online rounds, versioned by git + DVC.

A round is one pass over dvc.yaml. To start the next one, the flow copies the finished policy to
models/previous-policy, tracks it with `dvc add`, and points rounds.yaml's `round.start_policy`
at it: sampling and PPO then start from it, DVC sees the change and re-runs what depends on it,
and the store keeps every round's rows with their run ids. rounds.yaml is the round state's own
params file (DVC reads it beside params.yaml): the flow writes it whole and never touches the
user's params.yaml. It lists each finished round with the policy it sampled from, so
store.snapshot.rounds can keep earlier rounds' rankings. After a round the flow commits
dvc.lock, rounds.yaml, the store's scope file, the .dvc files and the git-tracked metrics, and tags the commit
`rlhf-round-<n>`, so `dvc metrics diff rlhf-round-1 rlhf-round-2` compares rounds and
`git checkout rlhf-round-1 && dvc pull` brings one back.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

from rlhf.config import PARAMS_FILE, ROUNDS_FILE, EarlierRound, RoundParams, load_params
from rlhf.store import scope_file

PREVIOUS_POLICY = "models/previous-policy"
# What a round commits: DVC's pointers, the small files DVC keeps in git (cache: false outs) and
# the links to the files params.yaml names (inputs/, rlhf/user_inputs.py), deps whose hashes dvc.lock holds.
ROUND_FILES = [
    "dvc.lock",
    ROUNDS_FILE,
    f"{PREVIOUS_POLICY}.dvc",
    "metrics",
    "plots",
    "reports",
    "dvclive",
    ".gitignore",
    "inputs",
]
ROUNDS_HEADER = (
    "# Round state of iterated online RLHF (rlhf/config.py RoundParams). The flow writes this file when\n"
    "# it starts a round (rlhf/flows/rounds.py), so params.yaml is never rewritten; DVC reads both.\n"
)


class RoundError(RuntimeError):
    """A round could not be prepared or recorded (the message says which command failed)."""


def _succeeds(command: list[str], root: Path) -> bool:
    return subprocess.run(command, cwd=root, capture_output=True, check=False).returncode == 0


def _run(command: list[str], root: Path) -> str:
    result = subprocess.run(command, cwd=root, capture_output=True, text=True, check=False)
    if result.returncode:
        raise RoundError(f"{' '.join(command)} failed in {root}: {(result.stderr or result.stdout).strip()}")
    return result.stdout


def dvc(root: Path, *args: str) -> str:
    return _run([sys.executable, "-m", "dvc", *args], root)


def git(root: Path, *args: str) -> str:
    return _run(["git", *args], root)


def is_git_repo(root: Path) -> bool:
    return _succeeds(["git", "rev-parse", "--git-dir"], root)


def git_identity_set(root: Path) -> bool:
    return _succeeds(["git", "config", "user.email"], root)


def current_round(root: Path) -> RoundParams:
    return load_params(root / PARAMS_FILE).round


def sampled_policy(root: Path, responses: str) -> str:
    """The content hash of the policy the finished round's responses came from."""
    checkpoints = pd.read_parquet(root / responses, columns=["policy_checkpoint"])["policy_checkpoint"].unique()
    if len(checkpoints) != 1:
        raise RoundError(f"{root / responses}: the finished round's responses come from {len(checkpoints)} policies")
    return str(checkpoints[0])


def store_scope_file(root: Path) -> str:
    """The store's scope file, relative to the project (a round commits it with dvc.lock)."""
    return str(scope_file(load_params(root / PARAMS_FILE).store.path))


def start_next_round(root: Path, policy_dir: str, responses: str) -> int:
    """Make the finished policy the next round's start; returns the new round number.

    rounds.yaml is written whole (it is the flow's file); the finished round joins its `earlier`
    list with the policy its responses came from. The policy copy is in place and tracked before
    rounds.yaml names it, so a crash leaves the old round whole.
    """
    finished = root / policy_dir
    if not (finished / "config.json").exists():
        raise RoundError(f"{finished}: no trained policy to start the next round from; run a round first")
    state = current_round(root)
    earlier = [*state.earlier, EarlierRound(number=state.number, policy_checkpoint=sampled_policy(root, responses))]
    target = root / PREVIOUS_POLICY
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(finished, partial)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    dvc(root, "add", "--quiet", PREVIOUS_POLICY)
    number = state.number + 1
    write_rounds(root, RoundParams(number=number, start_policy=PREVIOUS_POLICY, earlier=earlier))
    return number


def write_rounds(root: Path, state: RoundParams) -> None:
    """rounds.yaml, whole or not at all."""
    path = root / ROUNDS_FILE
    partial = path.with_name(path.name + ".partial")
    partial.write_text(ROUNDS_HEADER + yaml.safe_dump({"round": state.model_dump(mode="json")}, sort_keys=False))
    partial.replace(path)


def commit_round(root: Path, number: int, flow_run_name: str | None) -> str | None:
    """Commit what versions this round and tag it; returns the tag, or None when nothing changed."""
    present = [f for f in [*ROUND_FILES, store_scope_file(root)] if (root / f).exists()]
    git(root, "add", "--", *present)
    if _succeeds(["git", "diff", "--cached", "--quiet"], root):
        return None
    git(
        root,
        "commit",
        "--quiet",
        "-m",
        f"rlhf round {number}" + (f" (flow run {flow_run_name})" if flow_run_name else ""),
    )
    tag = f"rlhf-round-{number}"
    if _succeeds(["git", "rev-parse", "--verify", "--quiet", f"refs/tags/{tag}"], root):
        tag = f"{tag}-{git(root, 'rev-parse', '--short', 'HEAD').strip()}"  # a round number reused after a reset
    git(root, "tag", tag)
    return tag


def default_remote(root: Path) -> str | None:
    result = subprocess.run(
        [sys.executable, "-m", "dvc", "remote", "default"], cwd=root, capture_output=True, text=True, check=False
    )
    return result.stdout.strip() if result.returncode == 0 else None  # exit 1: "No default remote set"


def dvc_push(root: Path) -> str | None:
    """`dvc push` to the default remote; returns the remote's name, or None when none is set."""
    remote = default_remote(root)
    if remote:
        dvc(root, "push", "--quiet")
    return remote

"""Iterated online rounds, versioned by git + DVC.

A round is one pass over dvc.yaml. To start the next one, the flow copies the finished policy to
models/previous-policy, tracks it with `dvc add`, and points params.yaml's `round.start_policy`
at it: sampling and PPO then start from it, DVC sees the change and re-runs what depends on it,
and the store keeps every round's rows with their run ids. After a round the flow commits
dvc.lock, params.yaml, the .dvc files and the git-tracked metrics, and tags the commit
`rlhf-round-<n>`, so `dvc metrics diff rlhf-round-1 rlhf-round-2` compares rounds and
`git checkout rlhf-round-1 && dvc pull` brings one back.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

PREVIOUS_POLICY = "models/previous-policy"
# What a round commits: DVC's pointers and the small files DVC keeps in git (cache: false outs).
ROUND_FILES = [
    "dvc.lock", "params.yaml", f"{PREVIOUS_POLICY}.dvc", "metrics", "plots", "reports", "dvclive", ".gitignore",
]  # fmt: skip


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


def current_round(root: Path) -> dict:
    params = yaml.safe_load((root / "params.yaml").read_text())
    return params.get("round") or {"number": 1, "start_policy": "models/sft"}


def start_next_round(root: Path, policy_dir: str) -> int:
    """Make the finished policy the next round's start; returns the new round number.

    params.yaml is rewritten through a round trip of its YAML, keeping every other key; the policy
    copy is in place and tracked before params.yaml names it, so a crash leaves the old round whole.
    """
    finished = root / policy_dir
    if not (finished / "config.json").exists():
        raise RoundError(f"{finished}: no trained policy to start the next round from; run a round first")
    target = root / PREVIOUS_POLICY
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(finished, partial)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    dvc(root, "add", "--quiet", PREVIOUS_POLICY)
    params_path = root / "params.yaml"
    params = yaml.safe_load(params_path.read_text())
    number = int((params.get("round") or {}).get("number", 1)) + 1
    params["round"] = {"number": number, "start_policy": PREVIOUS_POLICY}
    text = params_path.read_text()
    head = text[: text.index("\n") + 1] if text.startswith("#") else ""  # keep the file's title comment
    partial_params = params_path.with_name("params.yaml.partial")
    partial_params.write_text(head + yaml.safe_dump(params, sort_keys=False))
    partial_params.replace(params_path)
    return number


def commit_round(root: Path, number: int, flow_run_name: str | None) -> str | None:
    """Commit what versions this round and tag it; returns the tag, or None when nothing changed."""
    present = [f for f in ROUND_FILES if (root / f).exists()]
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

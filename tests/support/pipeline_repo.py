"""A shrunk copy of the project in a fresh git + DVC repository, for the tests that run the pipeline."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

STAGES = [
    "bootstrap_policy",
    "collect_prompts",
    "sample_responses",
    "rank_responses",
    "store_comparisons",
    "train_reward",
    "train_cost",
    "train_policy",
    "evaluate",
]

SHRINK = {
    "bootstrap_policy": {
        "steps": 120,
        "demos_per_prompt": 2,
        "n_layer": 1,
        "n_embd": 32,
        "n_head": 2,
        "vocab_size": 400,
        "batch_size": 16,
    },
    "collect_prompts": {"max_prompts": 60},
    "sample_responses": {"k": 3, "max_new_tokens": 24},
    "train_reward": {"batching": "kwise", "epochs": 1, "batch_size": 4},  # the demo trains pairwise
    "train_cost": {"epochs": 1},
    "train_policy": {"iterations": 2, "batch_size": 8, "minibatch_size": 4, "ppo_epochs": 2, "max_new_tokens": 24},
    "evaluate": {"samples_per_prompt": 1, "report_samples": 2},
}

GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@localhost",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@localhost",
}


def run(command, cwd, check=True, env=None):
    # Stage commands say `python`: make it this interpreter, as `make` and the flow do.
    env = {**(env or os.environ), **GIT_ENV, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=env)
    if check and result.returncode:
        raise AssertionError(f"{command} failed:\n{result.stdout}\n{result.stderr}")
    return result


def dvc(*args, cwd):
    return run([sys.executable, "-m", "dvc", *args], cwd)


def make_repo(root: Path, project_root: Path, overrides: dict | None = None, shrink: bool = True) -> Path:
    """A fresh git + DVC repository at `root` holding the project's code and its params.yaml,
    shrunk (SHRINK) unless `shrink` is false, then `overrides`, section by section (a top-level
    key such as `seed` is replaced)."""
    root.mkdir(parents=True, exist_ok=True)
    # inputs: each stage's links to the files params.yaml names (rlhf/user_inputs.py), a dep in dvc.yaml
    for name in ["rlhf", "tasks", "flows", "configs", "bin", "inputs"]:  # tasks, flows: a past commit's layout
        if (project_root / name).exists():  # a past commit (bench/efficacy.py --rev) may lack a newer one
            shutil.copytree(project_root / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    # rounds.yaml: the round state; feedback.duckdb.scope.json: what the snapshot's scope takes from
    # the store (a dependency of store_comparisons, kept in git)
    for name in ["dvc.yaml", ".gitignore", "prefect.yaml", "rounds.yaml", "feedback.duckdb.scope.json"]:
        if (project_root / name).exists():  # a past commit (bench/efficacy.py --rev) may lack a newer one
            shutil.copy(project_root / name, root / name)
    params = yaml.safe_load((project_root / "params.yaml").read_text())
    for section, values in [*(SHRINK.items() if shrink else []), *(overrides or {}).items()]:
        if isinstance(values, dict):
            params[section].update(values)
        else:
            params[section] = values
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], root)
    dvc("init", "-q", cwd=root)
    shutil.copy(project_root / ".dvcignore", root / ".dvcignore")  # after init, which writes its own
    dvc("config", "core.analytics", "false", cwd=root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "init"], root)
    return root

"""The files params.yaml names as input, made visible to DVC.

DVC's templating cannot turn a list in params.yaml (prompt sources, reward terms) or an optional
path into a stage's deps, so each stage that reads user files depends on a directory of its own
(`inputs/<stage>`, named in dvc.yaml) holding one symbolic link per file params.yaml names, and a
`links.json` that says which key each link stands for. DVC hashes a linked file by its content, so
editing a demonstrations file changes exactly the stages that read it. A directory (a
`save_to_disk` dataset, a local model) is mirrored as a real directory of links to its files,
because DVC does not descend into a linked directory.

params.yaml stays the one source of truth: the stage that reads the files brings its directory in
step with its params before it reads anything (a change of path is a params change, so DVC runs
that stage, and records the new links' hashes after it ran). The directories are committed with
dvc.lock; links to files outside the repository work on the machine that has them.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from rlhf.config import Params

LINKS_FILE = "links.json"


@dataclass(frozen=True)
class UserInput:
    key: str
    """Where params.yaml names it, e.g. collect_prompts.sources.0.path."""
    path: str
    """The path as params.yaml gives it (relative to the repository root, or absolute)."""


def _local(key: str, value: str | None) -> list[UserInput]:
    """A value that is "a local path or hub id": an input only when it is a local path."""
    return [UserInput(key, value)] if value and Path(value).exists() else []


def stage_inputs(params: Params, stage: str) -> list[UserInput]:
    """Every file or directory params.yaml names that `stage` reads."""
    found: list[UserInput] = []
    if stage == "bootstrap_policy":
        section = params.bootstrap_policy
        found += _local("bootstrap_policy.model", section.model)
        if section.demonstrations:  # a file the user named: missing is an error the stage reports
            found.append(UserInput("bootstrap_policy.demonstrations", section.demonstrations))
    elif stage == "collect_prompts":
        for i, source in enumerate(params.collect_prompts.sources):
            if source.kind == "file":
                found.append(UserInput(f"collect_prompts.sources.{i}.path", source.path))
            elif source.kind == "hf_dataset" and source.path:
                found.append(UserInput(f"collect_prompts.sources.{i}.path", source.path))
            elif source.kind == "sql" and source.database:
                found.append(UserInput(f"collect_prompts.sources.{i}.database", source.database))
    elif stage == "rank_responses":
        section = params.rank_responses
        if section.llm:
            found += _local("rank_responses.llm.model", section.llm.model)
        if section.reward_model:
            found += _local("rank_responses.reward_model.path", section.reward_model.path)
        found += _local("rank_responses.human.reward_model", section.human.reward_model)  # selection's ensemble
    elif stage == "train_reward":
        found += _local("train_reward.backbone", params.train_reward.backbone)
    elif stage == "train_policy":
        for i, term in enumerate(params.train_policy.reward):
            if term.llm:
                found += _local(f"train_policy.reward.{i}.llm.model", term.llm.model)
        if params.evaluate.llm:  # the in-loop evaluation's judge
            found += _local("evaluate.llm.model", params.evaluate.llm.model)
    elif stage == "evaluate":
        if params.evaluate.llm:
            found += _local("evaluate.llm.model", params.evaluate.llm.model)
    return found


def link_target(path: str, link: Path) -> str:
    """What the link at `link` points to: relative when params.yaml gives a relative path, so a
    clone elsewhere resolves it inside its own tree."""
    if os.path.isabs(path):
        return path
    return os.path.relpath(Path(path).resolve(), link.parent.resolve())


def sync_links(directory: str | Path, inputs: list[UserInput]) -> None:
    """Make `directory` hold exactly one link (or mirror of links) per input, and links.json.

    Rewrites only what differs, so an unchanged configuration leaves every entry as it was.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    wanted = {item.key: item.path for item in inputs}
    for entry in directory.iterdir():
        if entry.name != LINKS_FILE and entry.name not in wanted:
            _remove(entry)
    for key, path in wanted.items():
        source = Path(path)
        if not source.exists():
            raise FileNotFoundError(f"params.yaml: {key}: no such file or directory: {path}")
        _mirror(source, path, directory / key)
    text = json.dumps(wanted, indent=2, sort_keys=True) + "\n"
    links_file = directory / LINKS_FILE
    if not links_file.exists() or links_file.read_text() != text:
        links_file.write_text(text)


def _mirror(source: Path, path: str, link: Path) -> None:
    """A link to a file; a directory of links (recursively) for a directory."""
    if source.is_dir():
        if link.is_symlink() or link.is_file():
            link.unlink()
        link.mkdir(exist_ok=True)
        names = {child.name for child in source.iterdir()}
        for entry in link.iterdir():
            if entry.name not in names:
                _remove(entry)
        for child in sorted(source.iterdir()):
            _mirror(child, os.path.join(path, child.name), link / child.name)
        return
    target = link_target(path, link)
    if link.is_symlink() and os.readlink(link) == target:
        return
    if link.exists() or link.is_symlink():
        _remove(link)
    link.symlink_to(target)


def _remove(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry)
    else:
        entry.unlink()

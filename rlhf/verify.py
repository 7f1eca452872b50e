"""`rlhf verify`: re-run the pipeline in a fresh clone of the current commit and compare what it
writes with what the commit's dvc.lock and files say.

Cached outputs (data, models) must match dvc.lock's md5 bit for bit. Outputs kept in git (metrics,
step plots, the report) also carry wall times, memory and timestamps, which no two runs share, so
they are compared with those fields left out: a JSON key, CSV column, TSV file or report line whose
name says time or memory (VOLATILE). Rendered PNGs are not compared (the CSV beside them is).
Bitwise agreement holds on the same CPU capability and thread count that wrote dvc.lock (floats
round by the kernels torch picks), so the report names both.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from rlhf.config import PARAMS_FILE, load_params
from rlhf.errors import InputError
from rlhf.machine import machine

# Names of fields that measure the run rather than the result (and provenance that names the run).
VOLATILE = re.compile(r"seconds|_s$|wall|runtime|per_second|rss|_mb$|timestamp|run_id|git_rev|dvc_rev", re.IGNORECASE)
NOT_COMPARED_SUFFIXES = {".png"}


@dataclass
class StageResult:
    stage: str
    differing_outs: list[str] = field(default_factory=list)
    compared_outs: int = 0
    differing_deps: list[str] = field(default_factory=list)
    differing_params: list[str] = field(default_factory=list)

    @property
    def same(self) -> bool:
        return not self.differing_outs


@dataclass
class VerifyReport:
    commit: str
    machine: dict
    stages: list[StageResult]

    @property
    def first_difference(self) -> StageResult | None:
        return next((stage for stage in self.stages if not stage.same), None)


def _git(root: Path, *args: str) -> str:
    result = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)
    if result.returncode:
        raise InputError(f"{root}: git {' '.join(args)} failed: {result.stderr.strip().splitlines()[-1:]}")
    return result.stdout


def _lock_stages(text: str) -> dict:
    return (yaml.safe_load(text) or {}).get("stages", {})


def _entries(items: list[dict] | None) -> dict[str, dict]:
    return {item["path"]: item for item in items or []}


def _normalised(path: Path) -> bytes:
    """The content of an uncached output with the run's own measurements left out."""
    if path.is_dir():
        digest = hashlib.md5()
        for child in sorted(p for p in path.rglob("*") if p.is_file()):
            if VOLATILE.search(child.stem) or child.suffix in NOT_COMPARED_SUFFIXES:
                continue
            digest.update(str(child.relative_to(path)).encode() + b"\0" + _normalised(child) + b"\0")
        return digest.hexdigest().encode()
    text = path.read_bytes()
    if path.suffix == ".json":
        return json.dumps(_drop_volatile(json.loads(text)), sort_keys=True).encode()
    if path.suffix == ".jsonl":
        lines = [json.dumps(_drop_volatile(json.loads(line)), sort_keys=True) for line in text.splitlines() if line]
        return "\n".join(lines).encode()
    if path.suffix in (".csv", ".tsv"):
        rows = list(csv.reader(io.StringIO(text.decode()), delimiter="\t" if path.suffix == ".tsv" else ","))
        keep = [i for i, name in enumerate(rows[0] if rows else []) if not VOLATILE.search(name)]
        return "\n".join(",".join(row[i] for i in keep if i < len(row)) for row in rows).encode()
    if path.suffix == ".md":
        return b"\n".join(line for line in text.splitlines() if not VOLATILE.search(line.decode(errors="replace")))
    return text


def _drop_volatile(value):
    if isinstance(value, dict):
        return {k: _drop_volatile(v) for k, v in value.items() if not VOLATILE.search(str(k))}
    if isinstance(value, list):
        return [_drop_volatile(v) for v in value]
    return value


def _lock_outs(stages: dict) -> list[str]:
    """Every output dvc.lock lists (a fresh clone holds those kept in git: metrics, plots, the report)."""
    return sorted({out["path"] for stage in stages.values() for out in stage.get("outs", [])})


def verify(
    root: str | Path,
    targets: list[str] | None = None,
    keep: str | Path | None = None,
    with_store: bool = False,
    log: Callable[[str], None] = print,
) -> VerifyReport:
    """Clone HEAD, `dvc repro --force` there, and compare every output with the commit's."""
    root = Path(root).resolve()
    commit = _git(root, "rev-parse", "HEAD").strip()
    if _git(root, "status", "--porcelain", "--untracked-files=no").strip():
        log(f"verify: the working tree has uncommitted changes; verifying commit {commit[:12]} as committed")
    committed = _lock_stages(_git(root, "show", "HEAD:dvc.lock"))
    if not committed:
        raise InputError(f"{root}/dvc.lock at {commit[:12]}: no stages to verify (run and commit the pipeline first)")
    here = machine()
    log(f"verify: commit {commit[:12]}; {json.dumps(here)} (dvc.lock must come from the same to match bitwise)")
    scratch = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="rlhf-verify-"))
    clone = scratch / "clone"
    try:
        _git(root, "clone", "--quiet", str(root), str(clone))
        _git(clone, "checkout", "--quiet", commit)
        before = scratch / "committed"
        for out in _lock_outs(committed):  # the commit's own copies, before the re-run overwrites them
            source = clone / out
            if source.is_dir():
                shutil.copytree(source, before / out)
            elif source.is_file():
                (before / out).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, before / out)
        store = load_params(clone / PARAMS_FILE).store.path  # the commit's params, with the schema's default
        if with_store and (root / store).exists():
            shutil.copy2(root / store, clone / store)
            log(f"verify: the clone starts from a copy of {store}")
        _reproduce(clone, targets or [], log)
        rerun = _lock_stages((clone / "dvc.lock").read_text())
        stages = [_compare(name, committed[name], rerun[name], before, clone) for name in rerun if name in committed]
        return VerifyReport(commit, here, stages)
    finally:
        if not keep:
            shutil.rmtree(scratch, ignore_errors=True)


def _reproduce(clone: Path, targets: list[str], log: Callable[[str], None]) -> None:
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["RLHF_PYTHON"] = sys.executable  # the clone has no .venv of its own: bin/python takes this one
    command = [sys.executable, "-m", "dvc", "repro", "--force", *targets]
    log(f"verify: {' '.join(command[2:])} in {clone}")
    process = subprocess.Popen(command, cwd=clone, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail: list[str] = []
    for line in process.stdout:
        tail = (tail + [line.rstrip()])[-20:]
        if re.match(r"(Running stage|\w+: done in)", line):
            log(f"verify: {line.rstrip()}")
    if process.wait():
        raise InputError("the re-run in the clone failed; its last lines:\n" + "\n".join(tail))


def _compare(name: str, committed: dict, rerun: dict, before: Path, clone: Path) -> StageResult:
    result = StageResult(name)
    committed_outs, rerun_outs = _entries(committed.get("outs")), _entries(rerun.get("outs"))
    for path, out in committed_outs.items():
        if Path(path).suffix in NOT_COMPARED_SUFFIXES:
            continue
        result.compared_outs += 1
        if (before / path).exists():  # kept in git: compare without the run's own measurements
            same = (clone / path).exists() and _normalised(before / path) == _normalised(clone / path)
        else:
            same = rerun_outs.get(path, {}).get("md5") == out.get("md5")
        if not same:
            result.differing_outs.append(path)
    rerun_deps = _entries(rerun.get("deps"))
    result.differing_deps = [
        path
        for path, dep in _entries(committed.get("deps")).items()
        if rerun_deps.get(path, {}).get("md5") != dep.get("md5")
    ]
    committed_params = {(f, k): v for f, values in (committed.get("params") or {}).items() for k, v in values.items()}
    rerun_params = {(f, k): v for f, values in (rerun.get("params") or {}).items() for k, v in values.items()}
    result.differing_params = [f"{f}:{k}" for (f, k), v in committed_params.items() if rerun_params.get((f, k)) != v]
    return result


def print_report(report: VerifyReport, out: Callable[[str], None] = print) -> int:
    """One line per stage, then the verdict; returns the exit status (0 same, 1 a difference)."""
    for stage in report.stages:
        if stage.same:
            out(f"{stage.stage}: same ({stage.compared_outs} outputs)")
        else:
            out(f"{stage.stage}: DIFFERS: {', '.join(stage.differing_outs)}")
    first = report.first_difference
    if first is None:
        out(f"verify: every output of {len(report.stages)} stages matches commit {report.commit[:12]}")
        return 0
    read = ", ".join(first.differing_deps + first.differing_params) or "nothing that differs"
    inputs_differ = first.differing_deps or first.differing_params
    cause = "an input differs" if inputs_differ else "the stage itself is not deterministic"
    out(f"verify: first difference in {first.stage}; of what it read, these differ: {read} ({cause})")
    return 1

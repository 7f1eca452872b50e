"""Reproducible by construction, on a real git + DVC repository and a real DuckDB store (issue 27):
the store's scope is a dependency DVC sees, a changed configuration snapshots what a fresh clone
does, and the round state never rewrites params.yaml."""

import gzip
import json
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.pipeline_repo import dvc, make_repo, run

pytestmark = pytest.mark.slow

HH = Path(__file__).resolve().parents[3] / "shared" / "data" / "hh-rlhf-harmless-sample.jsonl.gz"


@pytest.fixture(scope="module")
def repo(tmp_path_factory, project_root):
    root = make_repo(tmp_path_factory.mktemp("repro") / "repo", project_root, {"collect_prompts": {"max_prompts": 24}})
    dvc("repro", "--quiet", "store_comparisons", cwd=root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "k 3"], root)
    return root


def lock_md5(root: Path, stage: str, path: str) -> str:
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    return next(out["md5"] for out in lock["stages"][stage]["outs"] if out["path"] == path)


def set_param(root: Path, section: str, key: str, value) -> None:
    """What a person does in an editor: change one line, keeping every comment."""
    path = root / "params.yaml"
    lines = path.read_text().splitlines(keepends=True)
    start = lines.index(f"{section}:\n")
    for n in range(start + 1, len(lines)):
        stripped = lines[n].lstrip()
        if stripped.startswith(f"{key}:"):
            indent = lines[n][: len(lines[n]) - len(stripped)]
            comment = lines[n].split("#", 1)[1] if "#" in lines[n] else None
            lines[n] = f"{indent}{key}: {json.dumps(value)}" + (f"  #{comment}" if comment else "\n")
            path.write_text("".join(lines))
            return
    raise AssertionError(f"{section}.{key} not in params.yaml")


def test_a_k_change_snapshots_what_a_fresh_clone_of_the_commit_does(repo, tmp_path):
    set_param(repo, "sample_responses", "k", 4)
    dvc("repro", "--quiet", "store_comparisons", cwd=repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "k 4"], repo)
    from rlhf.store import FeedbackStore

    held = FeedbackStore(repo / "feedback.duckdb").query("SELECT count(DISTINCT ranking_id) AS n FROM rankings")
    assert held["n"].iloc[0] == 2 * 24  # both configurations' rankings are in the store ...
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    dvc("cache", "dir", "--local", str(repo / ".dvc" / "cache"), cwd=clone)
    dvc("checkout", "--quiet", "--with-deps", "store_comparisons", cwd=clone)
    assert not (clone / "feedback.duckdb").exists()
    dvc("repro", "--quiet", "--force", "--no-run-cache", "--single-item", "store_comparisons", cwd=clone)
    # ... and the checkout that made the change wrote what the fresh clone, with an empty store, writes
    snapshot = ("store_comparisons", "data/comparisons")
    assert lock_md5(clone, *snapshot) == lock_md5(repo, *snapshot)
    taken = json.loads((repo / "data" / "comparisons" / "scope.json").read_text())["taken"]
    assert taken == [{"source": "this configuration", "run_id": None, "rankings": 24}]
    assert (clone / "feedback.duckdb.scope.json").read_bytes() == (repo / "feedback.duckdb.scope.json").read_bytes()


def hh_rows(tmp_path: Path, name: str, rows: slice) -> Path:
    """Rows of the real HH-RLHF sample (../shared/data) where it is at hand; elsewhere (a clone
    outside the workspace, as CI's) rows written in its format, so the test runs either way."""
    if HH.exists():
        with gzip.open(HH, "rt") as source:
            lines = source.read().splitlines()[rows]
    else:
        lines = [json.dumps(hh_format_row(i)) for i in range(100)][rows]
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def hh_format_row(i: int) -> dict:
    question = f"\n\nHuman: how do I keep plant number {i} alive in winter?\n\nAssistant:"
    return {
        "chosen": f"{question} water it a little and keep it near the light, {i} days apart.",
        "rejected": f"{question} no idea, plant {i} is not my problem.",
    }


def rlhf(*args: str, cwd: Path) -> str:
    return run([sys.executable, "-m", "rlhf.cli", *args], cwd).stdout


def stages_changed(root: Path, target: str) -> dict:
    """DVC's status of `target` and the stages it depends on."""
    return json.loads(dvc("status", "--json", "--with-deps", target, cwd=root).stdout or "{}")


def test_an_import_in_scope_reruns_store_comparisons_and_reward_training_takes_it(repo, tmp_path):
    first = hh_rows(tmp_path, "first.jsonl", slice(0, 30))
    imported = rlhf("store", "import", str(first), "--format", "hh-rlhf", "--name", "hh", cwd=repo)
    first_rankings = rankings_taken(imported)
    assert stages_changed(repo, "store_comparisons") == {}  # not in the scope yet: nothing to re-run
    set_param(repo, "store", "imports", ["hh"])
    dvc("repro", "--quiet", "train_reward", cwd=repo)
    before = json.loads((repo / "metrics" / "reward.json").read_text())
    snapshot_before = json.loads((repo / "metrics" / "feedback.json").read_text())["snapshot_comparisons"]

    more = hh_rows(tmp_path, "more.jsonl", slice(30, 50))
    imported = rlhf("store", "import", str(more), "--format", "hh-rlhf", "--name", "hh", cwd=repo)
    added = int(imported.split("comparisons +")[1].split(",")[0])
    assert added > 0
    changed = stages_changed(repo, "train_reward")
    assert list(changed) == ["store_comparisons"]  # the store's scope file, a dependency, changed
    assert changed["store_comparisons"] == [{"changed deps": {"feedback.duckdb.scope.json": "modified"}}]
    dvc("repro", "--quiet", "train_reward", cwd=repo)
    after = json.loads((repo / "metrics" / "reward.json").read_text())
    snapshot_after = json.loads((repo / "metrics" / "feedback.json").read_text())["snapshot_comparisons"]
    assert snapshot_after == snapshot_before + added
    assert after["train_pairs"] + after["test_pairs"] == before["train_pairs"] + before["test_pairs"] + added
    taken = json.loads((repo / "data" / "comparisons" / "scope.json").read_text())["taken"]
    hh = {"source": "import hh", "run_id": "import-hh", "rankings": first_rankings + rankings_taken(imported)}
    assert hh in taken
    # nothing new: `dvc repro` runs nothing, and an import out of scope changes nothing
    lock, trained = (repo / "dvc.lock").read_bytes(), (repo / "metrics" / "reward.json").stat().st_mtime_ns
    dvc("repro", "--quiet", "train_reward", cwd=repo)
    assert (repo / "dvc.lock").read_bytes() == lock and (repo / "metrics" / "reward.json").stat().st_mtime_ns == trained
    assert stages_changed(repo, "train_reward") == {}
    rlhf(
        "store",
        "import",
        str(hh_rows(tmp_path, "other.jsonl", slice(50, 60))),
        "--format",
        "hh-rlhf",
        "--name",
        "other",
        cwd=repo,
    )
    assert stages_changed(repo, "train_reward") == {}


def rankings_taken(import_output: str) -> int:
    """`imported FILE: N rankings, ...`: the rankings an import took."""
    line = next(line for line in import_output.splitlines() if line.startswith("imported "))
    return int(line.split(": ", 1)[1].split(" rankings")[0])


def test_params_yaml_is_never_rewritten_and_the_round_state_has_its_own_file(repo):
    from rlhf.flows.rounds import start_next_round

    dvc("repro", "--quiet", "train_policy", cwd=repo)  # round 1's policy, sampled from models/sft
    params_before = (repo / "params.yaml").read_bytes()
    for expected in (2, 3):
        assert start_next_round(repo, "models/policy", "data/responses.parquet") == expected
        dvc("repro", "--quiet", "store_comparisons", cwd=repo)
    assert (repo / "params.yaml").read_bytes() == params_before
    state = yaml.safe_load((repo / "rounds.yaml").read_text())["round"]
    assert state["number"] == 3 and [r["number"] for r in state["earlier"]] == [1, 2]
    # store.snapshot.rounds: all keeps round 1's rankings (sampled from models/sft) beside round 3's
    record = json.loads((repo / "data" / "comparisons" / "scope.json").read_text())
    assert record["scope"]["earlier_policies"] == sorted(r["policy_checkpoint"] for r in state["earlier"])
    assert any(entry["source"] == "store" and entry["rankings"] >= 24 for entry in record["taken"]), record

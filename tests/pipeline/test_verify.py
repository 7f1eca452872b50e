"""`rlhf verify` (issue 27, item 7): a fresh clone of the commit re-runs the pipeline and every
output is compared with the commit's dvc.lock and files, on a real git + DVC repository."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rlhf.verify import VOLATILE, _normalised
from tests.support.pipeline_repo import dvc, make_repo, run

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

STAGES = ["bootstrap_policy", "collect_prompts", "sample_responses", "rank_responses", "store_comparisons"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory, project_root):
    shrunk = {"collect_prompts": {"max_prompts": 8}, "bootstrap_policy": {"steps": 30}}  # three runs: keep them short
    root = make_repo(tmp_path_factory.mktemp("verify") / "repo", project_root, shrunk)
    dvc("repro", "--quiet", "store_comparisons", cwd=root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "ran"], root)
    return root


def rlhf_verify(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rlhf.cli", "verify", *args], cwd=root, capture_output=True, text=True, timeout=540
    )


def test_a_fresh_clone_reproduces_every_output_and_a_changed_one_is_named(repo):
    result = rlhf_verify(repo, "store_comparisons")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines if ": same (" in line] == STAGES
    assert lines[-1].startswith("verify: every output of 5 stages matches commit")
    assert '"torch_cpu_capability"' in result.stdout  # it says which CPU capability and threads it used

    # A commit whose rankings another machine wrote differently, and whose metrics carry another
    # run's wall time: the rankings are named, the wall time is not a difference.
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    [rankings] = [o for o in lock["stages"]["rank_responses"]["outs"] if o["path"] == "data/rankings.parquet"]
    rankings["md5"] = "0" * 32
    (repo / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))
    metrics = json.loads((repo / "metrics/rank.json").read_text())
    (repo / "metrics/rank.json").write_text(json.dumps({**metrics, "judge_wall_s": 12345.6}))
    run(["git", "commit", "-qam", "another machine's rankings"], repo)
    result = rlhf_verify(repo, "store_comparisons")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "rank_responses: DIFFERS: data/rankings.parquet\n" in result.stdout
    assert "store_comparisons: same (" in result.stdout  # what it read is what the commit's run read
    assert result.stdout.splitlines()[-1] == (
        "verify: first difference in rank_responses; of what it read, these differ: nothing that differs "
        "(the stage itself is not deterministic)"
    )


def test_a_commit_without_a_pipeline_run_is_one_line_and_exit_2(tmp_path):
    run(["git", "init", "-q"], tmp_path)
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\n")
    run(["git", "add", "-A"], tmp_path)
    run(["git", "commit", "-qm", "empty"], tmp_path)
    result = rlhf_verify(tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().endswith("no stages to verify (run and commit the pipeline first)")
    assert len(result.stderr.strip().splitlines()) == 1


def test_measurements_are_left_out_and_results_kept(tmp_path):
    assert VOLATILE.search("train_wall_s") and VOLATILE.search("peak_rss_mb") and VOLATILE.search("timestamp")
    assert not VOLATILE.search("win_rate") and not VOLATILE.search("kl") and not VOLATILE.search("responses")
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"win_rate": 0.9, "train_wall_s": 1.0, "by": {"iteration_seconds": 2}}))
    b.write_text(json.dumps({"win_rate": 0.9, "train_wall_s": 7.0, "by": {"iteration_seconds": 3}}))
    assert _normalised(a) == _normalised(b)
    b.write_text(json.dumps({"win_rate": 0.8, "train_wall_s": 1.0, "by": {"iteration_seconds": 2}}))
    assert _normalised(a) != _normalised(b)
    a, b = tmp_path / "a.tsv", tmp_path / "b.tsv"
    a.write_text("timestamp\tstep\tkl\n100\t0\t0.5\n")
    b.write_text("timestamp\tstep\tkl\n200\t0\t0.5\n")
    assert _normalised(a) == _normalised(b)

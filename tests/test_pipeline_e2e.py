"""The whole pipeline on a shrunk config, in a temporary git + DVC repository, through Prefect.

One module-scoped run of the flow (a few minutes on 2 CPU cores) backs every test here.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

STAGES = [
    "bootstrap_policy",
    "collect_prompts",
    "sample_responses",
    "rank_responses",
    "store_comparisons",
    "train_reward",
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
    "train_reward": {"epochs": 1, "batch_size": 16},
    "train_policy": {"iterations": 2, "batch_size": 8, "minibatch_size": 4, "ppo_epochs": 2, "max_new_tokens": 24},
    "evaluate": {"samples_per_prompt": 1, "report_samples": 2},
}

GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@localhost",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@localhost",
}


def run(command, cwd, check=True):
    # Stage commands say `python`: make it this interpreter, as `make` and the flow do.
    env = {**os.environ, **GIT_ENV, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=env)
    if check and result.returncode:
        raise AssertionError(f"{command} failed:\n{result.stdout}\n{result.stderr}")
    return result


def dvc(*args, cwd):
    return run([sys.executable, "-m", "dvc", *args], cwd)


@pytest.fixture(scope="module")
def demo_repo(tmp_path_factory, project_root):
    """A fresh git + DVC repository holding the project's code and a shrunk params.yaml."""
    root = tmp_path_factory.mktemp("repo")
    for name in ["rlhf", "tasks", "flows", "configs"]:
        shutil.copytree(project_root / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ["dvc.yaml", ".gitignore"]:
        shutil.copy(project_root / name, root / name)
    params = yaml.safe_load((project_root / "params.yaml").read_text())
    for section, values in SHRINK.items():
        params[section].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], root)
    dvc("init", "-q", cwd=root)
    dvc("config", "core.analytics", "false", cwd=root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "init"], root)
    return root


@pytest.fixture(scope="module")
def flow_outcomes(demo_repo, prefect_harness):
    from flows.pipeline import rlhf_pipeline

    return rlhf_pipeline(str(demo_repo))["stages"]


def test_flow_runs_every_stage_in_dvc_order(flow_outcomes):
    assert list(flow_outcomes) == STAGES
    assert set(flow_outcomes.values()) == {"ran"}


def test_evaluation_metrics_are_complete_and_in_range(flow_outcomes, demo_repo):
    metrics = json.loads((demo_repo / "metrics" / "eval.json").read_text())
    for key in [
        "rm_accuracy",
        "rouge_baseline_accuracy",
        "length_baseline_accuracy",
        "win_rate_vs_start",
        "distinct_2_start",
        "distinct_2_final",
        "share_on_topic_start",
        "share_polite_final",
    ]:
        assert 0.0 <= metrics[key] <= 1.0, key
    for key in ["mean_reward_start", "mean_reward_final", "kl_to_start"]:
        assert isinstance(metrics[key], float), key
    assert metrics["rm_test_pairs"] > 0
    report = (demo_repo / "reports" / "eval.md").read_text()
    assert "win_rate_vs_start" in report and "| prompt | before | after |" in report


def test_dvc_status_is_clean_after_the_flow_and_repro_runs_nothing(flow_outcomes, demo_repo):
    assert json.loads(dvc("status", "--json", cwd=demo_repo).stdout or "{}") == {}
    output = dvc("repro", cwd=demo_repo).stdout
    assert "Running stage" not in output
    assert all(f"Stage '{stage}' didn't change" in output for stage in STAGES)


def test_second_flow_run_skips_every_stage(flow_outcomes, demo_repo):
    from flows.pipeline import rlhf_pipeline

    assert set(rlhf_pipeline(str(demo_repo))["stages"].values()) == {"skipped"}


def test_store_holds_every_pair_once_and_reingest_adds_nothing(flow_outcomes, demo_repo):
    from rlhf.store import FeedbackStore

    store = FeedbackStore(demo_repo / "feedback.duckdb")
    counts = store.counts()
    k = SHRINK["sample_responses"]["k"]
    assert counts["responses"] == counts["prompts"] * k
    assert counts["comparisons"] == counts["prompts"] * k * (k - 1) // 2
    snapshot = {p.name: p.read_bytes() for p in (demo_repo / "data" / "comparisons").iterdir()}
    dvc("repro", "--force", "--single-item", "store_comparisons", cwd=demo_repo)  # the stage's own command
    assert {t: n for t, n in store.counts().items() if t != "runs"} == {t: n for t, n in counts.items() if t != "runs"}
    assert {p.name: p.read_bytes() for p in (demo_repo / "data" / "comparisons").iterdir()} == snapshot
    assert set(snapshot) == {"pairs.parquet", "prompts.parquet", "responses.parquet"}


def test_flow_published_metrics_and_report_artifacts(flow_outcomes):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["rlhf-metrics", "evaluate-report"]))
        )
    assert {a.key for a in artifacts} == {"rlhf-metrics", "evaluate-report"}
    table = next(a for a in artifacts if a.key == "rlhf-metrics")
    assert "win_rate_vs_start" in json.dumps(table.data)


def test_bad_params_value_fails_the_flow_with_one_line_naming_the_key(flow_outcomes, demo_repo):
    """Runs last: breaks only the evaluate section, so only that stage re-runs, and fails."""
    from flows.pipeline import rlhf_pipeline

    params_file = demo_repo / "params.yaml"
    original = params_file.read_text()
    params = yaml.safe_load(original)
    params["evaluate"]["report_samples"] = -1
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        with pytest.raises(RuntimeError, match="stage evaluate failed"):
            rlhf_pipeline(str(demo_repo))
        direct = run([sys.executable, "-m", "dvc", "repro", "--single-item", "evaluate"], demo_repo, check=False)
        assert direct.returncode != 0
        assert "evaluate: error: params.yaml: evaluate.report_samples: Input should be greater than or equal to 0" in (
            direct.stdout + direct.stderr
        )
        # DVC removed the stage's old outs before running it; the failed stage wrote nothing in their place.
        assert not (demo_repo / "metrics" / "eval.json").exists()
        assert not list(demo_repo.rglob("*.partial"))
    finally:
        params_file.write_text(original)

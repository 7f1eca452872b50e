"""The whole pipeline on a shrunk config, in a temporary git + DVC repository, through Prefect.

One module-scoped run of the flow (a few minutes on 2 CPU cores) backs every test here.
"""

import base64
import json
import math
import re
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from tests.support.pipeline_repo import GIT_ENV, SHRINK, STAGES, dvc, make_repo, run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_repo(tmp_path_factory, project_root):
    return make_repo(tmp_path_factory.mktemp("repo"), project_root)


@pytest.fixture(scope="module")
def flow_outcomes(demo_repo, prefect_harness):
    from rlhf.flows.pipeline import rlhf_pipeline

    return rlhf_pipeline(str(demo_repo))["stages"]


def test_flow_runs_every_stage_in_dvc_order(flow_outcomes):
    assert list(flow_outcomes) == STAGES
    assert set(flow_outcomes.values()) == {"ran"}


def test_evaluation_metrics_are_complete(flow_outcomes, demo_repo):
    """Every figure the report quotes is there and is a number (two iterations train too little to
    move them; tests/pipeline/test_pipeline_helps.py checks that a longer run improves them)."""
    metrics = json.loads((demo_repo / "metrics" / "eval.json").read_text())
    quoted = ["rm_accuracy", "rouge_baseline_accuracy", "length_baseline_accuracy", "win_rate_vs_start"]
    quoted += ["distinct_2_start", "distinct_2_final", "share_on_topic_start", "share_polite_final"]
    quoted += ["mean_reward_start", "mean_reward_final", "kl_to_start"]
    missing = [key for key in quoted if not (isinstance(metrics.get(key), float) and math.isfinite(metrics[key]))]
    assert not missing, f"eval.json lacks a finite {missing}"
    assert metrics["rm_test_pairs"] > 0
    reward = json.loads((demo_repo / "metrics" / "reward.json").read_text())
    assert reward["batching"] == "kwise" and math.isfinite(reward["test_ece"])
    assert reward["accuracy_rules"] == reward["test_accuracy"]  # one label source here: the rule judge
    assert (demo_repo / "plots" / "reward.png").read_bytes()[:4] == b"\x89PNG"
    report = (demo_repo / "reports" / "eval.md").read_text()
    assert "win_rate_vs_start" in report and "| prompt | before | after |" in report
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)  # the curves, relative to the report
    assert sorted(linked) == ["../plots/gold_vs_proxy.png", "../plots/policy.png", "../plots/reward.png"]
    assert all((demo_repo / "reports" / path).resolve().read_bytes()[:4] == b"\x89PNG" for path in linked)


def test_dvc_status_is_clean_after_the_flow_and_repro_runs_nothing(flow_outcomes, demo_repo):
    assert json.loads(dvc("status", "--json", cwd=demo_repo).stdout or "{}") == {}
    output = dvc("repro", cwd=demo_repo).stdout
    assert "Running stage" not in output
    assert all(f"Stage '{stage}' didn't change" in output for stage in STAGES)


def test_second_flow_run_skips_every_stage(flow_outcomes, demo_repo):
    from rlhf.flows.pipeline import rlhf_pipeline

    assert set(rlhf_pipeline(str(demo_repo))["stages"].values()) == {"skipped"}


def test_workers_change_nothing_dvc_versions_and_give_the_same_bytes(flow_outcomes, demo_repo):
    """workers.* (rlhf/sharding.py): no stage depends on them, and two workers of sample_responses,
    rank_responses and evaluate write what one process writes."""
    outputs = ["data/responses.parquet", "data/rankings.parquet", "metrics/eval.json", "reports/eval.md"]
    one = {path: (demo_repo / path).read_bytes() for path in outputs}
    params_file = demo_repo / "params.yaml"
    original = params_file.read_text()
    params = yaml.safe_load(original)
    params["workers"] = {"sample_responses": 2, "rank_responses": 2, "evaluate": 2}
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        assert json.loads(dvc("status", "--json", cwd=demo_repo).stdout or "{}") == {}
        for stage in ("sample_responses", "rank_responses", "evaluate"):
            output = dvc("repro", "--force", "--single-item", stage, cwd=demo_repo).stdout
            assert "launching 2 workers" in output, output[-2000:]
        assert {path: (demo_repo / path).read_bytes() for path in outputs} == one
        assert not list((demo_repo / "data").glob("*.parts"))  # each stage removed its parts once written
    finally:
        params_file.write_text(original)


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
    # the three parts, the thumbs (none in the demo: its judge ranks), and what the scope took (store.snapshot)
    assert set(snapshot) == {
        "pairs.parquet",
        "prompts.parquet",
        "responses.parquet",
        "binary_labels.parquet",
        "scope.json",
    }
    assert pd.read_parquet(demo_repo / "data" / "comparisons" / "binary_labels.parquet").empty


def test_flow_published_metrics_and_report_artifacts(flow_outcomes):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    keys = {"rlhf-metrics", "evaluate-report", "ranked-samples", "ppo-curves", "rlhf-progress"}
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=list(keys))))
    assert {a.key for a in artifacts} == keys
    table = max((a for a in artifacts if a.key == "rlhf-metrics"), key=lambda a: a.created)
    assert "win_rate_vs_start" in json.dumps(table.data)
    # The newest version: the session's Prefect server also holds other modules' runs of this key.
    samples = max((a for a in artifacts if a.key == "ranked-samples"), key=lambda a: a.created).data
    samples = json.loads(samples) if isinstance(samples, str) else samples
    assert {"prompt", "rank", "score", "judge", "response"} <= set(samples[0])
    assert [row["rank"] for row in samples[: SHRINK["sample_responses"]["k"]]] == sorted(
        row["rank"] for row in samples[: SHRINK["sample_responses"]["k"]]
    )
    curves = max((a for a in artifacts if a.key == "ppo-curves"), key=lambda a: a.created).data
    report = max((a for a in artifacts if a.key == "evaluate-report"), key=lambda a: a.created).data
    assert "| iteration | score | kl" in curves
    # The curves as pictures the UI can show: PNGs inlined as data URLs (three in the curves, in the report too).
    for markdown in (curves, report):
        images = re.findall(r"!\[[^\]]*\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", markdown)
        assert len(images) == 3, markdown[:500]
        assert all(base64.b64decode(image).startswith(b"\x89PNG\r\n\x1a\n") for image in images)
    progress = [a for a in artifacts if a.key == "rlhf-progress"]
    assert max(float(a.data) for a in progress) == 100.0


def test_dvc_exp_run_sets_any_params_key_and_plots_render(flow_outcomes, demo_repo):
    shown = dvc("plots", "show", "-o", str(demo_repo.parent / "plots-out"), cwd=demo_repo)
    # every declared chart loads, the untrained cost model's included (DVC fails on a missing folder)
    assert "failed to load" not in shown.stdout + shown.stderr, shown.stderr
    rendered = (demo_repo.parent / "plots-out" / "index.html").read_text()
    assert "Policy training per iteration" in rendered and '"score"' in rendered
    run(["git", "add", "-A"], demo_repo)
    run(["git", "commit", "-qm", "the flow's round"], demo_repo)
    output = dvc("exp", "run", "-n", "fewer-samples", "-S", "evaluate.report_samples=1", cwd=demo_repo).stdout
    assert "Running stage 'evaluate'" in output and "Running stage 'train_policy'" not in output
    shown = dvc("exp", "show", "--json", cwd=demo_repo).stdout
    assert "fewer-samples" in shown
    # DVCLive's folder of every training stage is an output DVC versions; its summary is no column of
    # dvc exp show, whose metrics are the stages' own files (issue 32 item 6)
    experiments = json.loads(shown)
    workspace_metrics = experiments[0]["data"]["metrics"]
    assert "metrics/eval.json" in workspace_metrics
    assert not [name for name in workspace_metrics if name.startswith("dvclive/")]
    for stage in ("bootstrap_policy", "train_reward", "train_cost", "train_policy"):
        summary = json.loads((demo_repo / "dvclive" / stage / "metrics.json").read_text())
        assert summary["step"] > 0 or stage == "train_cost", (stage, summary)
    # Under PPO nothing reads a cost model: train_cost says so instead of training one, and a switch
    # to ppo_lagrangian (the reader) makes DVC run it again.
    cost = json.loads((demo_repo / "metrics" / "cost.json").read_text())
    assert cost["trained"] is False, cost
    assert cost["reason"].startswith("train_policy.algorithm is ppo, which reads no cost model"), cost
    assert [p.name for p in (demo_repo / "models" / "cost").iterdir()] == ["untrained.json"]
    params_path = demo_repo / "params.yaml"
    params = yaml.safe_load(params_path.read_text())
    params["train_policy"]["algorithm"] = "ppo_lagrangian"
    params_path.write_text(yaml.safe_dump(params))
    changed = json.loads(dvc("status", "train_cost", "--json", cwd=demo_repo).stdout or "{}")
    assert "train_cost" in changed, changed
    run(["git", "checkout", "--", "params.yaml"], demo_repo)
    assert "loss" in json.loads((demo_repo / "dvclive" / "train_reward" / "metrics.json").read_text())
    plots = json.loads(dvc("plots", "show", "--json", cwd=demo_repo).stdout)["data"]
    assert any(name.startswith("dvclive/train_reward/plots/metrics") for name in plots), sorted(plots)
    bad = run([sys.executable, "-m", "dvc", "exp", "run", "-S", "train_policy.iterations=many"], demo_repo, check=False)
    assert bad.returncode != 0
    assert "params.yaml: train_policy.iterations: Input should be a valid integer" in bad.stdout + bad.stderr
    # DVC removed train_policy's outs before the failed run; git and the cache bring them back.
    run(["git", "checkout", "--", "."], demo_repo)
    dvc("checkout", "--quiet", cwd=demo_repo)
    assert json.loads(dvc("status", "train_policy", "--json", cwd=demo_repo).stdout or "{}") == {}


def readme_block_after(heading: str, project_root) -> list[str]:
    """The command lines of the README's first code block after the line `heading`, as written."""
    text = (project_root / "README.md").read_text()
    block = text.split(heading, 1)[1].split("```", 2)[1]
    return [line for line in block.splitlines()[1:] if line.strip()]


def test_the_readme_commands_run_as_written_from_a_fresh_shell(flow_outcomes, demo_repo, project_root):
    """A new user's shell: no environment activated, the project's .venv not on PATH. The stages'
    `bin/python` must still find the interpreter that has torch (else "No module named 'torch'")."""
    import os

    (demo_repo / ".venv").symlink_to(sys.prefix)  # the environment `make setup` makes, where a user has it
    fresh_shell = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": os.environ["HOME"], **GIT_ENV}
    after_demo = readme_block_after("After `make demo`:", project_root)
    experiments = [line for line in readme_block_after("## Everyday commands", project_root) if "-n dpo" in line]
    assert len(after_demo) >= 5 and len(experiments) == 1, (after_demo, experiments)
    # The tests before this one re-ran store_comparisons by hand (its metrics count the runs), which
    # leaves evaluate behind: bring the repository back to what `make demo` leaves, a current dvc.lock.
    dvc("repro", cwd=demo_repo)
    run(["git", "add", "-A"], demo_repo)
    run(["git", "commit", "-qm", "before the README's commands"], demo_repo)
    for line in [*after_demo, *experiments]:
        command = line.split("  #")[0].strip()
        result = subprocess.run(
            ["bash", "-c", command], cwd=demo_repo, env=fresh_shell, capture_output=True, text=True, timeout=600
        )
        assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
        if command.endswith("dvc repro"):
            assert "Running stage" not in result.stdout, result.stdout  # the flow kept dvc.lock current
    assert "Running stage 'train_policy'" in result.stdout  # the DPO experiment ran its stage under bin/python
    assert '"dpo"' in run([sys.executable, "-m", "dvc", "exp", "show", "--json"], demo_repo).stdout
    run(["git", "checkout", "--", "."], demo_repo)
    dvc("checkout", "--quiet", cwd=demo_repo)


def test_bad_params_value_fails_the_flow_with_one_line_naming_the_key(flow_outcomes, demo_repo):
    """Runs last: a bad value in the evaluate section stops the flow before any stage, and the stage alone."""
    from rlhf.config import ConfigError
    from rlhf.flows.pipeline import rlhf_pipeline

    params_file = demo_repo / "params.yaml"
    original = params_file.read_text()
    params = yaml.safe_load(original)
    params["evaluate"]["report_samples"] = -1
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        # The flow reads params.yaml before any stage: it stops at once, naming the key.
        with pytest.raises(ConfigError, match=r"params.yaml: evaluate.report_samples: Input should be greater"):
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

"""PPO, DPO and PPO-Lagrangian on the same shrunk pipeline, compared as DVC experiments."""

import json
import math
import sys

import pandas as pd
import pytest
import torch

from rlhf.reward_models.cost import load_cost_model
from rlhf.scoring import frame_texts, score_texts
from rlhf.snapshot import read_safety_labels
from tests.support.pipeline_repo import dvc, make_repo, run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ppo_repo(tmp_path_factory, project_root):
    """The shrunk pipeline reproduced with PPO, committed: the baseline every experiment diffs against.

    The bootstrap trains longer than the shrunk default so that its samples hold some harmful tips
    (about 8% of them): the cost model needs both labels."""
    overrides = {
        "bootstrap_policy": {"steps": 400},
        "train_cost": {"when": "always", "epochs": 10, "learning_rate": 0.001},
    }
    root = make_repo(tmp_path_factory.mktemp("algorithms") / "repo", project_root, overrides)
    dvc("repro", "--quiet", cwd=root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "ppo"], root)
    return root


def metrics_diff(root) -> dict:
    """`dvc metrics diff --json`: {file: {key: {old, new, diff}}} between HEAD and the workspace."""
    return json.loads(dvc("metrics", "diff", "--all", "--json", cwd=root).stdout)


def test_dpo_trains_on_the_comparisons_and_evaluate_compares_it_with_ppo(ppo_repo):
    output = dvc("exp", "run", "-n", "dpo", "-S", "train_policy.algorithm=dpo", cwd=ppo_repo).stdout
    # The comparisons, reward model and samples are reused: only the policy and its evaluation re-run.
    assert "Running stage 'train_policy'" in output and "Running stage 'evaluate'" in output
    assert "Running stage 'train_reward'" not in output and "Running stage 'sample_responses'" not in output
    policy = json.loads((ppo_repo / "metrics" / "policy.json").read_text())
    assert policy["algorithm"] == "dpo" and policy["train_pairs"] > 0
    # The policy starts as the reference: every implicit reward margin is 0; training must move it up,
    # on the training batches and on held-out pairs it never saw.
    assert policy["held_out_margin_before"] == 0.0
    assert policy["held_out_margin_after"] > 0.0
    curve = pd.read_csv(ppo_repo / "plots" / "policy.csv")
    assert list(curve.columns[:2]) == ["iteration", "step"] and len(curve) >= 2
    assert curve["reward_margin"].iloc[-1] > curve["reward_margin"].iloc[0]
    # evaluate measures the DPO policy on the held-out prompts PPO was measured on; the diff puts
    # the two side by side: algorithm, judge win rate against the start, KL to it, training time.
    diff = metrics_diff(ppo_repo)["metrics/eval.json"]
    assert diff["policy_algorithm"]["old"] == "ppo" and diff["policy_algorithm"]["new"] == "dpo"
    for key in ("win_rate_vs_start", "kl_to_start", "policy_train_wall_s"):
        assert isinstance(diff[key]["old"], float) and isinstance(diff[key]["new"], float), key
    assert diff["held_out_prompts"]["old"] == diff["held_out_prompts"]["new"]
    assert "dpo" in dvc("exp", "show", "--json", cwd=ppo_repo).stdout
    # dvc.yaml's charts are the PPO family's; every algorithm's own series are its DVCLive folder's
    # (TRL's names: rewards/margins is the curve's reward_margin).
    target = "dvclive/train_policy/plots/metrics"
    dvc("plots", "show", target, "-o", str(ppo_repo.parent / "plots-dpo"), cwd=ppo_repo)
    assert f"{target}/rewards/margins.tsv" in (ppo_repo.parent / "plots-dpo" / "index.html").read_text()


def test_cost_model_learns_the_harmlessness_flags(ppo_repo):
    cost = json.loads((ppo_repo / "metrics" / "cost.json").read_text())
    assert cost["trained"] and 0.0 < cost["train_unsafe_share"] < 1.0
    assert math.isfinite(cost["test_balanced_accuracy"])  # a few unsafe held-out samples: too few to bound
    responses = pd.read_parquet(ppo_repo / "data" / "comparisons" / "responses.parquet")
    assert responses["unsafe"].notna().all() and responses["unsafe"].any()
    # It learned the flags it was given: flagged training responses cost more than the others.
    labels = read_safety_labels(ppo_repo / "data" / "comparisons")
    train = labels[labels["split"] == "train"]
    model, tokenizer = load_cost_model(ppo_repo / "models" / "cost", torch.device("cpu"))
    costs = score_texts(model, tokenizer, frame_texts(tokenizer, train, "response"))
    flagged = torch.tensor(train["unsafe"].to_numpy(dtype=bool))
    assert costs[flagged].mean() > costs[~flagged].mean() + 1.0, (costs[flagged].mean(), costs[~flagged].mean())


def test_ppo_lagrangian_runs_against_the_cost_model_and_evaluate_reports_unsafe_shares(ppo_repo):
    output = dvc(
        "exp",
        "run",
        "-n",
        "safe",
        "-S",
        "train_policy.algorithm=ppo_lagrangian",
        "-S",
        "train_policy.iterations=3",
        cwd=ppo_repo,
    ).stdout
    # train_cost's params name train_policy.algorithm (train_cost.when: needed trains only for
    # ppo_lagrangian), so DVC runs it again; with when: always it trains the same model again.
    assert "Running stage 'train_cost'" in output and "Running stage 'train_policy'" in output
    assert " cost " in output and " lambda " in output  # the per-iteration line
    policy = json.loads((ppo_repo / "metrics" / "policy.json").read_text())
    curve = pd.read_csv(ppo_repo / "plots" / "policy.csv")
    assert {"cost", "lagrange_multiplier"} <= set(curve.columns) and len(curve) == 3
    # the metrics are the last iteration's
    assert policy["algorithm"] == "ppo_lagrangian"
    assert policy["cost"] == pytest.approx(curve["cost"].iloc[-1])
    assert policy["lagrange_multiplier"] == pytest.approx(curve["lagrange_multiplier"].iloc[-1])
    evaluation = json.loads((ppo_repo / "metrics" / "eval.json").read_text())
    shares = ("unsafe_share_start", "unsafe_share_final", "win_rate_vs_start")
    assert all(math.isfinite(evaluation[key]) for key in shares), evaluation


def test_unknown_algorithm_fails_naming_the_key(ppo_repo):
    bad = run([sys.executable, "-m", "dvc", "exp", "run", "-S", "train_policy.algorithm=sac"], ppo_repo, check=False)
    assert bad.returncode != 0
    expected = (
        "params.yaml: train_policy.algorithm: Input should be "
        "'ppo', 'grpo', 'rloo', 'reinforce_pp', 'gspo', 'dpo', 'kto' or "
    )
    assert expected + "'ppo_lagrangian' (got 'sac')" in bad.stdout + bad.stderr
    run(["git", "checkout", "--", "."], ppo_repo)
    dvc("checkout", "--quiet", "--force", cwd=ppo_repo)

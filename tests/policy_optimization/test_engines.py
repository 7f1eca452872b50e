"""DeepSpeed ZeRO-2, ZeRO-3 and FSDP2 run the train_policy stage as two CPU processes over gloo.

Each engine runs PPO and GRPO as a stage would on a GPU cluster (accelerate launch with the
launcher's config in configs/accelerate/): generation under ZeRO-3 and FSDP gathers the sharded
weights, the checkpoint is the engine's own sharded one, a SIGKILL mid-run resumes and ends where
an uninterrupted run ends, the saved policy loads with from_pretrained, and the run matches DDP's.

Tolerances, with their reasons:
  - resumed vs uninterrupted, same engine: bitwise. A resume restores every process's weights,
    optimizer shards and RNG states exactly, and the same reductions run in the same order.
  - an engine vs DDP: 1e-5 relative. DDP all-reduces gradients in buckets while ZeRO
    reduce-scatters flat partitions and FSDP reduce-scatters per unit, so the sums add in another
    order; each step differs by float rounding and a few steps carry it on.
"""

from __future__ import annotations

import json
import re
import subprocess

import pandas as pd
import pytest
import torch

from rlhf.pretrained import load_policy
from tests.support.policy_runs import kill_whole_stage_once, measured, run_stage

ENGINES = ["deepspeed_zero2", "deepspeed_zero3", "fsdp"]
# Three iterations, a checkpoint each; no clipping (DeepSpeed clips policy and critic under one norm,
# the others each on its own) and no in-loop evaluation, so that every engine takes the same steps.
RUN = {
    "iterations": 3,
    "batch_size": 8,
    "minibatch_size": 4,
    "ppo_epochs": 1,
    "max_new_tokens": 8,
    "checkpoint_every": 1,
    "max_grad_norm": 1e6,
    "eval_every": 0,
    "log_samples_every": 0,
    "num_processes": 2,
}
GRPO = {**RUN, "algorithm": "grpo", "group_size": 4}


def ranks_of(done: subprocess.CompletedProcess) -> str:
    """Every rank's own lines (the launcher's summary at the end does not carry the cause)."""
    return "\n".join(line for line in done.stderr.splitlines() if "rank" in line or "Error" in line)[-6000:]


def trained_policy(root) -> dict[str, torch.Tensor]:
    return load_policy(root / "policy", torch.device("cpu")).state_dict()


def assert_close_to(reference: dict, other: dict, what: str) -> None:
    for name, tensor in reference.items():
        scale = max(tensor.abs().max().item(), 1.0)
        difference = (tensor - other[name]).abs().max().item()
        assert difference <= 1e-5 * scale, f"{what}: {name} differs by {difference}"


# Where each engine writes every process's own share of the checkpoint
SHARD_OF_RANK_1 = {
    "deepspeed_zero2": "zero_pp_rank_1_*optim_states.pt",
    "deepspeed_zero3": "zero_pp_rank_1_*",
    "fsdp": "__1_*.distcp",
}


@pytest.mark.timeout(600)
@pytest.mark.parametrize("engine", ENGINES)
def test_ppo_under_the_engine_resumes_after_sigkill_where_an_uninterrupted_run_ends(
    engine, stage_workspace, project_root
):
    """PPO with its critic: the run, then the same run killed (launcher and workers) after its first
    checkpoint and started again. The engine's sharded checkpoint is what the resume reads."""
    root, command = stage_workspace
    run = {**RUN, "launcher": engine}
    done = run_stage(command(**run), project_root)
    assert done.returncode == 0, ranks_of(done)
    assert "2 process(es)" in done.stdout
    assert len(json.loads((root / "policy.json").read_text())["peak_rss_mb_per_process"]) == 2
    uninterrupted, uninterrupted_curve = trained_policy(root), pd.read_csv(root / "policy.csv")
    subprocess.run(["rm", "-rf", str(root / "policy")], check=True)

    kill_whole_stage_once(command(**run), project_root, root / "ckpt" / "iteration-000001")
    checkpoint = sorted((root / "ckpt").glob("iteration-*"))[-1]
    assert list(checkpoint.rglob(SHARD_OF_RANK_1[engine])), sorted(p.name for p in checkpoint.rglob("*"))
    resumed = run_stage(command(**run), project_root)
    assert resumed.returncode == 0, ranks_of(resumed)
    assert re.search(r"resumed after iteration [12] from", resumed.stdout)
    curve = pd.read_csv(root / "policy.csv")
    unmeasured = [column for column in curve if column not in measured(curve)]
    pd.testing.assert_frame_equal(curve[unmeasured], uninterrupted_curve[unmeasured])
    final = trained_policy(root)
    differences = {name: (uninterrupted[name] - final[name]).abs().max().item() for name in uninterrupted}
    assert max(differences.values()) == 0.0, f"{engine}: resumed differs by {max(differences.values())}"


_DDP_RESULT: dict[str, dict] = {}


@pytest.fixture
def ddp_grpo(stage_workspace, project_root) -> dict[str, torch.Tensor]:
    """DDP's GRPO policy, the result every engine is compared with: run once, in the first test's workspace."""
    if "grpo" not in _DDP_RESULT:
        root, command = stage_workspace
        done = run_stage(command(**GRPO, launcher="ddp"), project_root)
        assert done.returncode == 0, ranks_of(done)
        _DDP_RESULT["grpo"] = trained_policy(root)
        subprocess.run(["rm", "-rf", str(root / "policy")], check=True)
    return _DDP_RESULT["grpo"]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("engine", ENGINES)
def test_grpo_under_the_engine_ends_where_ddp_ends(engine, ddp_grpo, stage_workspace, project_root):
    root, command = stage_workspace
    done = run_stage(command(**GRPO, launcher=engine), project_root)
    assert done.returncode == 0, ranks_of(done)
    assert_close_to(ddp_grpo, trained_policy(root), f"GRPO under {engine} against DDP")


@pytest.mark.timeout(300)
def test_gradient_checkpointing_and_offload_keys_run_the_stage(stage_workspace, project_root):
    """train_policy.gradient_checkpointing, offload_reference and offload_reward_model change where
    memory goes, never the result: on the CPU nothing is offloaded and the recomputed activations
    are the same floats, so the policy is the plain run's, bit for bit."""
    root, command = stage_workspace
    plain = run_stage(command(**{**RUN, "num_processes": 1}), project_root)
    assert plain.returncode == 0, plain.stderr
    expected = trained_policy(root)
    saving = {"gradient_checkpointing": True, "offload_reference": True, "offload_reward_model": True}
    done = run_stage(command(**{**RUN, "num_processes": 1, **saving}), project_root)
    assert done.returncode == 0, done.stderr
    assert all(torch.equal(expected[name], tensor) for name, tensor in trained_policy(root).items())
    metrics = json.loads((root / "policy.json").read_text())
    assert len(metrics["peak_rss_mb_per_process"]) == 1 and metrics["peak_rss_mb_per_process"][0] > 10


@pytest.mark.gpu
def test_offloaded_frozen_models_give_the_same_training_and_stay_in_cpu_memory(tiny_tokenizer):
    """On CUDA the offloaded reference and reward model live in CPU memory between their forwards
    and the run is the one with them on the device (the same kernels on the same inputs)."""
    from rlhf.config import TrainPolicyParams
    from rlhf.policy_optimization.engine import offloaded
    from rlhf.policy_optimization.rollout import RewardScorer
    from rlhf.policy_optimization.trainer import train_policy
    from tests.policy_optimization.test_ppo_training import PROMPTS, tiny_models

    cuda = torch.device("cuda")
    params = TrainPolicyParams(iterations=2, batch_size=8, minibatch_size=4, max_new_tokens=8, eval_every=0)
    results = []
    for offload in (False, True):
        models = tiny_models(tiny_tokenizer, params, device="cpu")
        models.trained.to(cuda)
        models.reference = offloaded(models.reference, cuda, offload)
        reward = tiny_models(tiny_tokenizer, params, seed=1, device="cpu").trained.critic
        scorer = RewardScorer(offloaded(reward, cuda, offload), tiny_tokenizer)
        result = train_policy(models, scorer, tiny_tokenizer, PROMPTS, params, 0, log=lambda row: None)
        where = {p.device.type for p in [*models.reference.parameters(), *scorer.model.parameters()]}
        assert where == ({"cpu"} if offload else {"cuda"})
        results.append(([row["score"] for row in result.history], models.policy.state_dict()))
    (scores, weights), (offloaded_scores, offloaded_weights) = results
    assert scores == pytest.approx(offloaded_scores, abs=1e-6)
    assert_close_to(weights, offloaded_weights, "offloaded against on the device")

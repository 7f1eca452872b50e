"""A minibatch's gradient does not depend on how it is split over micro-batches or processes.

Each case takes one SGD step (lr 1, no clipping) on the same fixed rollout (tests/support/split_update.py)
and compares the parameters' change. Before the losses were divided by the whole minibatch's
counts, each micro-batch was reduced on its own and accumulation averaged the micro-batch means:
token_mean at micro-batch size 1 became a per-sequence mean, and a kept response's weight under
dynamic sampling depended on who shared its micro-batch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.support import split_update

CASES = [
    ("ppo", "token_mean", False, False),
    ("ppo", "token_mean", False, True),  # with the rollout correction's weights
    ("grpo", "token_mean", False, False),
    ("grpo", "sequence_mean", False, False),
    ("grpo", "constant_length", False, False),
    ("grpo", "token_mean", True, False),  # dynamic sampling drops two groups' responses
    ("grpo", "sequence_mean", True, False),
    ("rloo", "constant_length", True, False),
    ("reinforce_pp", "token_mean", False, False),
]


def assert_same_step(a: dict, b: dict, what: str) -> None:
    for name in a:
        scale = a[name].abs().max().item() + 1e-12
        difference = (a[name] - b[name]).abs().max().item()
        assert difference <= 1e-5 * max(scale, 1.0), f"{what}: {name} differs by {difference} (scale {scale})"


@pytest.mark.parametrize("algorithm,aggregation,dynamic,correction", CASES)
def test_a_minibatch_step_is_the_same_at_micro_batch_sizes_1_2_and_whole(algorithm, aggregation, dynamic, correction):
    torch.set_num_threads(1)
    whole = split_update.parameter_step(algorithm, aggregation, split_update.ROWS, dynamic, correction)
    assert any(delta.abs().max() > 1e-4 for delta in whole.values()), "the step moved nothing: the check is void"
    for micro_batch in (1, 2):
        split = split_update.parameter_step(algorithm, aggregation, micro_batch, dynamic, correction)
        assert_same_step(whole, split, f"{algorithm}/{aggregation} at micro-batch {micro_batch}")


def test_the_aggregations_differ_on_this_rollout():
    """Otherwise the cases above could not tell one aggregation's reduction from another's."""
    token = split_update.parameter_step("grpo", "token_mean", split_update.ROWS)
    sequence = split_update.parameter_step("grpo", "sequence_mean", split_update.ROWS)
    name = next(iter(token))
    assert (token[name] - sequence[name]).abs().max() > 1e-4


@pytest.mark.parametrize(
    "algorithm,aggregation,dynamic,micro_batch",
    [("ppo", "token_mean", False, 1), ("grpo", "sequence_mean", True, 2), ("grpo", "token_mean", True, 4)],
)
def test_two_ddp_processes_take_the_same_step_as_one(
    tmp_path, project_root, algorithm, aggregation, dynamic, micro_batch
):
    """Two processes over gloo, each with half the minibatch (whole groups), against one process
    with all of it. DDP averages the processes' gradients; the loss's counts are the global ones."""
    out = tmp_path / "step.json"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(project_root / "tests" / "support" / "split_update.py"),
        algorithm,
        aggregation,
        str(micro_batch),
        "1" if dynamic else "0",
        "0",
        str(out),
    ]
    environment = {**os.environ, "PYTHONPATH": str(project_root), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=project_root, env=environment, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]
    two = {name: torch.tensor(values) for name, values in json.loads(out.read_text()).items()}
    torch.set_num_threads(1)
    one = split_update.parameter_step(algorithm, aggregation, split_update.ROWS, dynamic)
    assert_same_step({k: v.flatten() for k, v in one.items()}, two, f"{algorithm}/{aggregation} over 2 processes")

"""A training stage as several processes: the launch command and, on a CPU, the process group.

`train_policy.launcher` and `train_reward.launcher` (rlhf.config.Launcher) name the engine. Other than `single`,
the stage runs itself again under `accelerate launch` with the matching file in
configs/accelerate/ (DDP on CPU under torchrun instead: accelerate would want MPI there), and each
process finds itself a member by WORLD_SIZE in its environment.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedType

SHARDED_LAUNCHERS = ("deepspeed_zero2", "deepspeed_zero3", "fsdp")
ACCELERATE_CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "accelerate"


def is_launched_process() -> bool:
    """True in a process the launcher started (torchrun and accelerate launch set WORLD_SIZE)."""
    return "WORLD_SIZE" in os.environ


def relaunch_as_processes(stage: str, launcher: str, num_processes: int, device: torch.device) -> None:
    """Run this same command (`python -m rlhf.stages.<stage> ...`) as `num_processes` processes
    under `launcher`, and exit with their status."""
    if os.environ.get("RLHF_LAUNCHED"):
        raise RuntimeError(f"{stage}: the launcher started a single process; see configs/accelerate/")
    if device.type == "cpu" and launcher == "ddp":
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(num_processes)]
    else:
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes)]
        # port 0: accelerate picks a free one, so runs side by side on one machine do not collide
        launch += ["--config_file", str(ACCELERATE_CONFIGS / f"{launcher}.yaml"), "--main_process_port", "0"]
    print(f"{stage}: launching {num_processes} processes ({launcher})", flush=True)
    env = {**os.environ, "RLHF_LAUNCHED": "1"}
    done = subprocess.run([*launch, "-m", f"rlhf.stages.{stage}", *sys.argv[1:]], env=env, check=False)
    sys.exit(done.returncode)


def start_sharded_engine_on_cpu(launcher: str, device: torch.device) -> bool:
    """In a launched DeepSpeed or FSDP process on a CPU, the process group over gloo, started before
    the Accelerator (or a Trainer's) is built; returns whether it was (the caller then must not ask
    accelerate for a CPU run).

    accelerate 1.15 picks no backend for a non-CPU launch without a GPU (so it counts one process)
    and turns on FSDP only over GPU-like process groups; `Accelerator(cpu=True)` would give plain
    DDP. So the shared state is started over gloo, and for FSDP marked as a multi-device run."""
    if not (device.type == "cpu" and launcher in SHARDED_LAUNCHERS and is_launched_process()):
        return False
    state = PartialState(backend="gloo")
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        state.distributed_type = DistributedType.MULTI_GPU  # only so that AcceleratorState turns FSDP on
    return True


def zero_stage(accelerator: Accelerator) -> int:
    """The DeepSpeed ZeRO stage the accelerator runs, 0 without DeepSpeed."""
    plugin = accelerator.state.deepspeed_plugin
    return plugin.zero_stage if plugin is not None else 0


def shards_weights(accelerator: Accelerator) -> bool:
    """ZeRO-3 and FSDP hold a shard of each trained weight per process; ZeRO-2 and DDP hold them whole."""
    return zero_stage(accelerator) == 3 or accelerator.distributed_type == DistributedType.FSDP

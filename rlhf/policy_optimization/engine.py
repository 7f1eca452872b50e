"""The engine under the loop: accelerate's processes and sharding (DDP, DeepSpeed ZeRO-2/3, FSDP2),
offloading frozen models, saving the policy whole, and the device's clocks and memory figures.

Nothing here depends on the algorithm; the trainer (trainer.py) and the update (update.py) call it.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from accelerate import Accelerator

from rlhf.config import TrainPolicyParams
from rlhf.launch import shards_weights, start_sharded_engine_on_cpu, zero_stage
from rlhf.machine import peak_rss_mb
from rlhf.policy_optimization.models import PolicyModels


def make_accelerator(params: TrainPolicyParams, device: torch.device) -> Accelerator:
    bf16 = params.mixed_precision == "bf16" or (params.mixed_precision == "auto" and device.type == "cuda")
    sharded = start_sharded_engine_on_cpu(params.launcher, device)
    accelerator = Accelerator(
        cpu=device.type == "cpu" and not sharded,
        mixed_precision="bf16" if bf16 else "no",
        gradient_accumulation_steps=params.minibatch_size // params.micro_batch,
    )
    if accelerator.state.deepspeed_plugin is not None:  # no dataloader to infer the batch sizes from
        accelerator.state.deepspeed_plugin.deepspeed_config.update(
            train_micro_batch_size_per_gpu=params.micro_batch,
            train_batch_size=params.minibatch_size * accelerator.num_processes,
            gradient_clipping=params.max_grad_norm,  # one norm over policy and critic together (DeepSpeed's own)
        )
        if not accelerator.state.deepspeed_plugin.zero3_init_flag:
            # accelerate registers its config with transformers whatever zero3_init_flag says, and
            # transformers then loads every model already partitioned: the frozen reference and the
            # reward model too, which no engine gathers. They stay whole; the engine shards the trained.
            from transformers.integrations import unset_hf_deepspeed_config

            unset_hf_deepspeed_config()
    return accelerator


def offloaded(model: torch.nn.Module, device: torch.device, offload: bool) -> torch.nn.Module:
    """With `offload`, a frozen model (loaded on the CPU) kept in CPU memory and moved whole to
    `device` only for each forward, its outputs returned where its inputs came from; else the model
    on `device`. The update phase, where a policy's memory peaks (weights, gradients, optimizer
    state, activations), then has the device to itself. Nothing moves on a CPU run."""
    if not offload or device.type == "cpu":
        return model.to(device)
    from accelerate.utils import send_to_device

    model.to("cpu")
    callers: list[torch.device] = []

    def bring(module, args, kwargs):
        inputs = [t for t in [*args, *kwargs.values()] if torch.is_tensor(t)]
        callers.append(inputs[0].device if inputs else device)
        module.to(device)
        return send_to_device(args, device), send_to_device(kwargs, device)

    def send_back(module, args, kwargs, output):
        module.to("cpu")
        return send_to_device(output, callers.pop())

    model.register_forward_pre_hook(bring, with_kwargs=True)
    model.register_forward_hook(send_back, with_kwargs=True)
    return model


def fsdp_units(trained: torch.nn.Module) -> list[str]:
    """The classes FSDP shards as units (accelerate reads `_no_split_modules`): each model's layers and
    the policy itself, whose own forward generation calls. The critic's other weights (embeddings,
    value head) stay with the root unit: critic_values calls its parts, never its forward, and its
    backbone's class may be the policy's, whose embeddings are tied to the policy's head."""
    names = {type(trained.policy).__name__, *(trained.policy._no_split_modules or [])}
    if trained.critic is not None:
        names |= set(trained.critic._no_split_modules or [])
    return sorted(names)


def save_policy(models: PolicyModels, accelerator: Accelerator, tokenizer, directory: str | Path) -> None:
    """Write the trained policy as a plain transformers model: LoRA merged, ZeRO-3 / FSDP shards gathered."""
    accelerator.wait_for_everyone()
    state = accelerator.get_state_dict(models.prepared) if shards_weights(accelerator) else None
    if accelerator.is_main_process:
        policy = models.trained_policy()
        if state is not None:
            state = {k.removeprefix("policy."): v for k, v in state.items() if k.startswith("policy.")}
        policy.save_pretrained(directory, state_dict=state)
        tokenizer.save_pretrained(directory)
    accelerator.wait_for_everyone()


@contextlib.contextmanager
def whole_for_rollout(models: PolicyModels):
    """FSDP2 gathers a unit's weights when that unit's own forward runs; the rollout reads the
    critic's embeddings and value head, which belong to the root unit, without the root's forward, so
    the root's own weights are gathered for the rollout (the layers still gather one at a time)."""
    root = models.prepared if _is_fsdp_unit(models.prepared) else None
    if root is not None:
        root.unshard()
    try:
        yield
    finally:
        if root is not None:
            root.reshard()


def _is_fsdp_unit(module: torch.nn.Module | None) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


@contextlib.contextmanager
def gathered(accelerator: Accelerator, module: torch.nn.Module):
    """`module`'s whole weights in every process for the block: ZeRO-3 gathers its shards; FSDP2
    keeps each layer's gathered weights across the block's forwards (generation's decode steps)
    instead of gathering them again per step, then frees them. Nothing to do under the other engines."""
    if zero_stage(accelerator) == 3:
        import deepspeed  # only present where ZeRO is configured

        with deepspeed.zero.GatheredParameters(list(module.parameters())):
            yield
        return
    units = [m for m in module.modules() if _is_fsdp_unit(m)] if accelerator.is_fsdp2 else []
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()
            unit.set_reshard_after_forward(True, recurse=False)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":  # so that peak_cuda_memory_mb is this iteration's peak
        torch.cuda.reset_peak_memory_stats(device)


def throughput_and_memory(stats: dict, seconds: float, device: torch.device) -> dict:
    """iteration_seconds (rollout and update), tokens_per_second (generated tokens, all processes),
    peak_rss_mb (this process's peak resident memory since it started: the OS keeps no per-iteration
    peak) and, on CUDA, peak_cuda_memory_mb (torch.cuda.max_memory_allocated in this iteration)."""
    figures = {
        "iteration_seconds": seconds,
        "tokens_per_second": stats["generated_tokens"] / max(seconds, 1e-9),
        "peak_rss_mb": peak_rss_mb(),
    }
    if device.type == "cuda":
        figures["peak_cuda_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return figures

"""One minibatch update on a fixed rollout: the gradient step the split-invariance tests compare.

Run as a script under torchrun (`--nproc_per_node 2`), each process takes its half of the
rollout (whole groups) and writes the parameters' change after one optimizer step to OUT, so the
test can compare two processes with one. Imported, `parameter_step` runs in this process.
"""

from __future__ import annotations

import json
import sys

import torch
from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel

from rlhf.config import TrainPolicyParams
from rlhf.policy_optimization.engine import make_accelerator
from rlhf.policy_optimization.models import PolicyAndCritic
from rlhf.policy_optimization.rollout import Rollout
from rlhf.policy_optimization.update import policy_update

ROWS, QUERY, STEPS, VOCAB = 8, 5, 7, 48
# Response lengths 7, 1, 2, 7, 3, 7, 5, 2: unequal, so the aggregations differ.
LENGTHS = [7, 1, 2, 7, 3, 7, 5, 2]


def config() -> GPT2Config:
    return GPT2Config(
        vocab_size=VOCAB,
        n_positions=32,
        n_embd=16,
        n_layer=1,
        n_head=2,
        pad_token_id=0,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )


def models(algorithm: str) -> PolicyAndCritic:
    torch.manual_seed(0)
    policy = GPT2LMHeadModel(config())
    critic = None
    if algorithm in ("ppo", "ppo_lagrangian"):
        critic = GPT2ForSequenceClassification(GPT2Config(**{**config().to_dict(), "num_labels": 1}))
    return PolicyAndCritic(policy, critic)


def rollout(algorithm: str, dynamic_sampling: bool, correction: bool) -> Rollout:
    """A rollout of ROWS responses with random tokens, pi_old a little off the current policy (so
    ratios move and some clip), random advantages; groups of 2 for the critic-free algorithms."""
    generator = torch.Generator().manual_seed(1)
    query_ids = torch.randint(1, VOCAB, (ROWS, QUERY), generator=generator)
    query_mask = torch.ones(ROWS, QUERY, dtype=torch.long)
    query_mask[1, :2] = 0  # left padding on two rows
    query_mask[4, :1] = 0
    response_ids = torch.randint(1, VOCAB, (ROWS, STEPS), generator=generator)
    mask = (torch.arange(STEPS)[None, :] < torch.tensor(LENGTHS)[:, None]).float()
    response_ids = response_ids.masked_fill(mask == 0, 0)
    logprobs = (-3.0 - torch.rand(ROWS, STEPS, generator=generator)) * mask
    advantages = torch.randn(ROWS, STEPS, generator=generator) * mask
    critic = algorithm in ("ppo", "ppo_lagrangian")
    values = torch.randn(ROWS, STEPS, generator=generator) * mask if critic else None
    returns = torch.randn(ROWS, STEPS, generator=generator) * mask if critic else None
    ref_logprobs = (-3.0 - torch.rand(ROWS, STEPS, generator=generator)) * mask
    kept = torch.tensor([True, True, False, False, True, True, True, True]) if dynamic_sampling else None
    weights = (0.5 + torch.rand(ROWS, STEPS, generator=generator)) * mask if correction else None
    return Rollout(
        query_ids,
        query_mask,
        response_ids,
        mask,
        logprobs,
        values,
        torch.zeros(ROWS),
        advantages,
        returns,
        torch.zeros(ROWS),
        torch.zeros(ROWS),
        ref_logprobs,
        correction=weights,
        kept=kept,
    )


def params(algorithm: str, aggregation: str, micro_batch: int, processes: int = 1, **extra) -> TrainPolicyParams:
    return TrainPolicyParams(
        algorithm=algorithm,
        loss_aggregation=aggregation,
        batch_size=ROWS,
        minibatch_size=ROWS // processes,
        micro_batch_size=micro_batch,
        ppo_epochs=1,
        group_size=2,
        max_new_tokens=STEPS,
        max_grad_norm=1e9,
        entropy_coef=0.01,
        kl_coef=0.3,
        launcher="ddp" if processes > 1 else "single",
        num_processes=processes,
        **extra,
    )


def parameter_step(algorithm, aggregation, micro_batch, dynamic_sampling=False, correction=False, rank=0, processes=1):
    """The change of every parameter after one SGD step (lr 1) on this process's share of the rollout."""
    settings = params(algorithm, aggregation, micro_batch, processes)
    model = models(algorithm)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    accelerator = make_accelerator(settings, torch.device("cpu"))
    trained, optimizer = accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=1.0))
    share = ROWS // processes
    rows = torch.arange(rank * share, (rank + 1) * share)
    experience = rollout(algorithm, dynamic_sampling, correction).minibatch(rows)
    shuffle = torch.Generator().manual_seed(0)
    policy_update(
        trained, trained, accelerator, optimizer, experience, settings, shuffle, None, kl_coef=settings.kl_coef
    )
    return {name: (p.detach() - before[name]) for name, p in accelerator.unwrap_model(trained).named_parameters()}


if __name__ == "__main__":
    algorithm, aggregation, micro_batch, dynamic, correction, out = sys.argv[1:]
    import os

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    step = parameter_step(algorithm, aggregation, int(micro_batch), dynamic == "1", correction == "1", rank, world)
    if rank == 0:
        with open(out, "w") as handle:
            json.dump({name: delta.flatten().tolist() for name, delta in step.items()}, handle)

"""The update: several epochs of the algorithm's loss over shuffled minibatches of one rollout.

Each minibatch is one optimizer step, accumulated over micro-batches; every loss term of it is
divided by counts over the whole minibatch (all its micro-batches and processes:
algorithms.MinibatchCounts), so its gradient is the same at any micro-batch size and process count.
The policy's term is the algorithm's (algorithms.py); the entropy bonus (Schulman et al. 2017,
eq. 9) and, with a critic, the clipped value loss (Huang et al. 2024) are shared.
"""

from __future__ import annotations

import torch
from accelerate import Accelerator

from rlhf.config import TrainPolicyParams
from rlhf.errors import TrainingStopped
from rlhf.policy_optimization import core
from rlhf.policy_optimization.algorithms import Algorithm, MinibatchCounts, algorithm_for
from rlhf.policy_optimization.rollout import Rollout


def policy_update(
    model,
    forward,
    accelerator: Accelerator,
    optimizer,
    rollout: Rollout,
    params: TrainPolicyParams,
    shuffle: torch.Generator,
    checkpoints,
    kl_coef: float = 0.0,
    algorithm: Algorithm | None = None,
) -> dict[str, float]:
    """`params.ppo_epochs` epochs of the algorithm's loss over shuffled minibatches of `rollout`,
    one optimizer step per minibatch, accumulated over micro-batches; returns the update's means.

    `model` is the prepared policy+critic module (policy alone for the critic-free algorithms);
    `forward` is it or its torch.compile'd wrapper. kl_coef: beta, where the algorithm's loss has a
    KL term (GRPO's k3). `algorithm`: default the one `params.algorithm` names. Before the first
    optimizer step the policy is the one that sampled, so the micro-batches seen until then measure
    how far the sampler's log-probs sit from the update's own forward (`update_logprob_drift`, mean
    absolute difference per token; bf16 makes it non-zero on CUDA)."""
    algorithm = algorithm or algorithm_for(params)
    inner = accelerator.unwrap_model(model)
    totals: dict[str, float] = {}
    micro_steps, drift, drift_tokens, stepped = 0, 0.0, 0.0, False
    # accelerate divides each micro-batch's loss by the accumulation steps and DDP averages the
    # processes' gradients; the losses here are already sums over the whole minibatch's counts, so
    # this factor undoes both and the minibatch's gradient is the same however it is split.
    unsplit = accelerator.gradient_accumulation_steps * accelerator.num_processes
    all_reduce = lambda t: accelerator.reduce(t, reduction="sum")  # noqa: E731
    for _ in range(params.ppo_epochs):
        order = torch.randperm(len(rollout.scores), generator=shuffle).to(rollout.scores.device)
        for minibatch_start in range(0, len(order), params.minibatch_size):
            minibatch = order[minibatch_start : minibatch_start + params.minibatch_size]
            counts = MinibatchCounts.of(rollout, all_reduce, minibatch)  # not a copy of the minibatch's tensors
            for start in range(0, len(minibatch), params.micro_batch):
                mb = rollout.minibatch(minibatch[start : start + params.micro_batch])
                with accelerator.accumulate(model):
                    logits, values = forward(mb.query_ids, mb.query_mask, mb.response_ids, mb.mask, params.temperature)
                    all_logprobs = torch.log_softmax(logits.float(), dim=-1)  # (B, T, V), shared with the entropy
                    logprobs = all_logprobs.gather(-1, mb.response_ids.unsqueeze(-1)).squeeze(-1)  # (B, T)
                    if not stepped:
                        drift += ((logprobs.detach() - mb.logprobs).abs() * mb.mask).sum().item()
                        drift_tokens += mb.mask.sum().item()
                    loss, terms, step = micro_batch_loss(
                        algorithm, logprobs, all_logprobs, values, mb, params, kl_coef, counts
                    )
                    stop_if_not_finite(loss, terms, checkpoints)
                    accelerator.backward(loss * unsplit)
                    if accelerator.sync_gradients:
                        step.update(clipped_grad_norms(accelerator, inner, params.max_grad_norm))
                    stepped = stepped or accelerator.sync_gradients
                    optimizer.step()
                    optimizer.zero_grad()
                step["entropy"] = terms.pop("entropy").detach()
                step.update(terms)
                for key, value in step.items():
                    totals[key] = totals.get(key, 0.0) + (value.item() if torch.is_tensor(value) else value)
                micro_steps += 1
    return {
        **logged_means(totals, micro_steps, params, accelerator.num_processes),
        "update_logprob_drift": drift / max(drift_tokens, 1.0),
    }


def micro_batch_loss(
    algorithm: Algorithm,
    logprobs: torch.Tensor,
    all_logprobs: torch.Tensor,
    values: torch.Tensor | None,
    mb: Rollout,
    params: TrainPolicyParams,
    kl_coef: float,
    counts: MinibatchCounts,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(loss, its terms and the entropy, the policy term's statistics) of one micro-batch:
    L = L_policy - c2 * S[pi] + c1 * L_value  (Schulman et al. 2017, eq. 9), the policy term the
    algorithm's, the value term only with a critic. `all_logprobs` (B, T, V) give the entropy."""
    policy_loss, step = algorithm.loss(logprobs, mb, kl_coef, counts)
    terms, loss = {"policy_loss": policy_loss}, policy_loss
    # Differentiated only when it is in the loss: at entropy_coef 0 the update does no more work.
    with torch.set_grad_enabled(bool(params.entropy_coef)):
        entropy = core.masked_mean(core.entropy(all_logprobs), mb.mask, counts.all.tokens)
    if params.entropy_coef:
        terms["entropy_bonus"] = -params.entropy_coef * entropy
        loss = loss + terms["entropy_bonus"]
    if values is not None:  # the critic; the critic-free algorithms have no value loss
        terms["value_loss"] = core.value_loss(
            values, mb.values, mb.returns, mb.mask, params.value_clip_range, counts.all.tokens
        )
        loss = loss + params.vf_coef * terms["value_loss"]
    return loss, {**terms, "entropy": entropy}, step


def stop_if_not_finite(loss: torch.Tensor, terms: dict[str, torch.Tensor], checkpoints) -> None:
    """Before the optimizer step, so the weights stay as the last good ones."""
    if torch.isfinite(loss):
        return
    where = checkpoints.latest() if checkpoints else None
    parts = ", ".join(
        f"{name.removesuffix('_loss')} {value.item()}" for name, value in terms.items() if name != "entropy"
    )
    raise TrainingStopped(
        f"policy loss is {loss.item()} ({parts}); "
        f"stopped before the optimizer step; last good checkpoint: {where or 'none'}"
    )


def clipped_grad_norms(accelerator: Accelerator, inner, max_norm: float) -> dict[str, float]:
    """Clip the policy's and the critic's gradients each to `max_norm`; their norms before clipping.
    DeepSpeed clips inside its engine and reports nothing here."""
    norms = {}
    for name, module in (("policy_grad_norm", inner.policy), ("critic_grad_norm", inner.critic)):
        if module is None:
            continue
        norm = accelerator.clip_grad_norm_([p for p in module.parameters() if p.requires_grad], max_norm)
        if norm is not None:
            norms[name] = float(norm)
    return norms


# Logged terms that are a micro-batch's share of its minibatch's value (sums over the minibatch's counts).
MINIBATCH_SHARES = ("policy_loss", "value_loss", "entropy_bonus", "entropy", "kl_loss")


def logged_means(totals: dict[str, float], micro_steps: int, params: TrainPolicyParams, processes: int) -> dict:
    """Per-update means of the summed statistics: a minibatch's loss terms are the sum of its
    micro-batches' shares (times the processes, each holding an equal share), averaged over
    optimizer steps; grad norms are per optimizer step; the rest (clip fraction, approx KL) are
    micro-batch means."""
    optimizer_steps = max(micro_steps // (params.minibatch_size // params.micro_batch), 1)
    means = {}
    for key, value in totals.items():
        if key in MINIBATCH_SHARES:
            means[key] = value * processes / optimizer_steps
        elif key.endswith("grad_norm"):
            means[key] = value / optimizer_steps
        else:
            means[key] = value / max(micro_steps, 1)
    return means


@torch.no_grad()
def recompute_logprobs(forward, params: TrainPolicyParams, query_ids, query_mask, response_ids, mask) -> torch.Tensor:
    """log pi_old of a rollout's tokens by the update's own forward, in micro-batches.  (B, T)

    Under bf16 the sampler's log-probs can differ from these by up to ~0.1 nats per token, against
    a clip range of 0.2, so the ratio would start off 1 before any update."""
    rows = []
    for start in range(0, len(query_ids), params.micro_batch):
        part = slice(start, start + params.micro_batch)
        logits, _ = forward(query_ids[part], query_mask[part], response_ids[part], mask[part], params.temperature)
        rows.append(torch.log_softmax(logits.float(), -1).gather(-1, response_ids[part].unsqueeze(-1)).squeeze(-1))
    return torch.cat(rows)

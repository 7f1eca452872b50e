"""Rollout-training mismatch correction: importance weights between the sampler and the trainer.

The sampler's log-probs (log pi_rollout: a KV-cached decode loop, perhaps another kernel or a
vLLM engine, bf16) and the update's own forward pass (log pi_old, recomputed under
`train_policy.recompute_old_logprobs`) differ token by token even with the same weights. PPO's
ratio is taken against pi_old, but the tokens were drawn from pi_rollout, so each token's loss
carries the importance weight w_t = pi_old(a_t | s_t) / pi_rollout(a_t | s_t). Where that
weight is extreme the sample says little about pi_old; four standard ways to bound it:

  token_truncate     truncated IS (TIS): the loss at each token times min(w_t, C)
  sequence_truncate  the same with the sequence weight w = prod_t w_t for every token of it
  token_mask         masked IS (MIS): tokens with w_t outside [1/C, C] get weight 0, others 1
  sequence_mask      whole sequences whose w lies outside [1/C, C] get weight 0

References: Yao et al. 2025, "Your Efficient RL Framework Secretly Brings You Off-Policy RL
Training" (TIS); verl's rollout correction guide (docs/algo/rollout_corr.md: token and sequence
IS, rejection masks with a lower bound of 1 / upper by default); SkyRL's off_policy_correction;
ms-swift's rollout_importance_sampling_mode (token_truncate | token_mask | sequence_truncate |
sequence_mask, threshold 2.0), whose names these follow.

Departure: a masked token keeps its place in the token count that the loss is divided by (its
weight is 0, its mask is not), so masking never rescales the other tokens' gradients.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

Mode = Literal["none", "token_truncate", "token_mask", "sequence_truncate", "sequence_mask"]


def importance_weights(
    old_logprobs: torch.Tensor, rollout_logprobs: torch.Tensor, mask: torch.Tensor, mode: Mode, threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights, corrected): the per-token loss weights (detached) and where the correction bit,
    i.e. a weight truncated or a token masked.  (B, T), (B, T) -> (B, T) float, (B, T) bool

    w_t = exp(log pi_old - log pi_rollout), computed in float64 so a long sequence's product does
    not overflow before it is compared with the threshold."""
    log_w = ((old_logprobs.double() - rollout_logprobs.double()) * mask).detach()  # (B, T), 0 on padding
    on = mask > 0
    if mode == "none":
        return torch.ones_like(old_logprobs), torch.zeros_like(on)
    if mode.startswith("sequence"):
        log_w = log_w.sum(-1, keepdim=True).expand_as(log_w)  # log prod_t w_t at every token
    upper, lower = math.log(threshold), -math.log(threshold)
    if mode.endswith("truncate"):
        corrected = (log_w > upper) & on
        weights = torch.exp(torch.clamp(log_w, max=upper))
    elif mode.endswith("mask"):
        corrected = ((log_w > upper) | (log_w < lower)) & on
        weights = (~corrected).double()
    else:
        raise ValueError(f"unknown rollout correction {mode!r}")
    return (weights * mask).to(old_logprobs.dtype), corrected

"""The networks the online algorithms hold: the trained policy and critic as one module, and the frozen reference.

The critic-free algorithms (grpo, rloo, reinforce_pp) hold the same module with no critic: nothing
of a value model is built, prepared, optimised or checkpointed for them.

Policy and critic live in one `nn.Module` so that one optimizer (a parameter group each, with its
own learning rate) and one accelerate / DeepSpeed engine hold everything that trains. The critic
is a separate network (initialised as `critic_start` says), not a head on the policy, so the value
loss never moves the policy. With LoRA the reference is the policy itself with its adapters
switched off, so no second copy of the policy's weights is held.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlhf.config import TrainPolicyParams
from rlhf.logprobs import joined_inputs, response_logits
from rlhf.pretrained import backbone, use_fused_gelu
from rlhf.sampling import CompiledSampler


def critic_start(
    policy_dir: Path,
    reward_dir: Path,
    policy_tokenizer: PreTrainedTokenizerBase,
    reward_tokenizer: PreTrainedTokenizerBase,
    reward_is_the_reward_model: bool = True,
) -> Path:
    """Where the critic's weights start. The critic reads the policy's token ids (V(s_t) at every
    response position), so it starts from the reward model only where that shares the policy's
    tokenizer and the online reward is that model's score alone (`reward_is_the_reward_model`):
    then it already values these texts on the returns' scale, after the trainer's rescaling of
    its head (InstructGPT's choice; Huang et al. 2024). A reward model on another backbone (an
    encoder, another vocabulary) cannot read the policy's tokens, and under a rules, remote,
    judge or weighted reward its head values something else, so the critic starts from the
    policy itself with a new value head: its backbone reads the tokens, and the head learns from
    the first rollouts."""
    same_vocabulary = policy_tokenizer.get_vocab() == reward_tokenizer.get_vocab()
    return reward_dir if same_vocabulary and reward_is_the_reward_model else policy_dir


def disable_dropout(model: nn.Module) -> None:
    """Dropout off everywhere, so log-probs of the rollout and of the update agree at the first step
    (Huang et al. 2024, detail 1) while the model can stay in train mode for gradient checkpointing."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


class PolicyAndCritic(nn.Module):
    """critic None: a critic-free algorithm's policy alone (its state dict holds only policy.*)."""

    def __init__(self, policy: PreTrainedModel, critic: PreTrainedModel | None):
        super().__init__()
        self.policy, self.critic = policy, critic

    def forward(self, query_ids, query_mask, response_ids, mask, temperature: float):
        """(logits that predicted each response token, scaled as at sampling; V(s_t) or None without
        a critic): (B, T, V), (B, T)"""
        args = (query_ids, query_mask, response_ids, mask)
        values = None if self.critic is None else critic_values(self.critic, *args)
        return response_logits(self.policy, *args, temperature), values


def critic_values(critic: PreTrainedModel, query_ids, query_mask, response_ids, mask) -> torch.Tensor:
    """V(s_t) for every response position: the scalar head on the hidden states that precede each token.  (B, T)"""
    input_ids, attention_mask, position_ids = joined_inputs(query_ids, query_mask, response_ids, mask)
    hidden = backbone(critic)(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
    steps = response_ids.shape[1]
    return critic.score(hidden.last_hidden_state[:, -steps - 1 : -1])[..., 0].float()


@dataclass
class PolicyModels:
    trained: PolicyAndCritic  # what the optimizer updates
    reference: PreTrainedModel | None  # frozen starting policy; None under LoRA (adapters off instead)
    # Around sampling: gathers the policy's ZeRO-3 shards (set by the trainer); nothing otherwise.
    generation_context: Callable[[], contextlib.AbstractContextManager] = field(default=contextlib.nullcontext)
    # The policy's sampler when train_policy.compile_generation is on (set by the trainer); else the eager loop.
    compiled_sampler: CompiledSampler | None = None
    # The critic starts as a copy of the reward model (critic_start): its head then reads raw scores.
    critic_is_reward_model: bool = False
    # `trained` as the engine wrapped it (set by the trainer): the ZeRO-3 / FSDP save gathers from it.
    prepared: nn.Module | None = None

    @property
    def policy(self) -> PreTrainedModel:
        return self.trained.policy

    @classmethod
    def build(
        cls,
        policy: PreTrainedModel,
        critic: PreTrainedModel | None,
        params: TrainPolicyParams,
        reference: PreTrainedModel | None = None,
        critic_is_reward_model: bool = False,
    ) -> PolicyModels:
        """Wire the models as params ask: LoRA or a frozen copy as reference, checkpointing, no dropout.

        A critic copied from the reward model gets a bias on its value head (zero: the same
        function), so that `normalize_critic_head` can put its values on the normalised scale.
        critic None: the critic-free algorithms (params.critic_free), which must pass none."""
        if (critic is None) != params.critic_free:
            wrong = "needs a critic" if critic is None else "is critic-free: pass critic=None"
            raise ValueError(f"train_policy.algorithm {params.algorithm} {wrong}")
        if params.lora_rank:
            from peft import LoraConfig, get_peft_model

            lora = LoraConfig(
                r=params.lora_rank,
                lora_alpha=params.lora_alpha,
                lora_dropout=0.0,
                target_modules=params.lora_target_modules,
                task_type="CAUSAL_LM",
            )
            policy, reference = get_peft_model(policy, lora), None
        elif reference is None:
            raise ValueError("a reference policy is needed unless lora_rank > 0")
        else:
            reference.requires_grad_(False).eval()
            disable_dropout(reference)
        for model in (policy, critic, reference):
            if model is not None:
                use_fused_gelu(model)
        for model in (policy, critic):
            if model is None:
                continue
            disable_dropout(model)
            if params.gradient_checkpointing:
                model.activation_checkpointing_enable({"use_reentrant": False})
                if params.lora_rank and model is policy:
                    model.enable_input_require_grads()  # frozen embeddings would cut the recompute graph
        if critic_is_reward_model and critic is not None and critic.score.bias is None:
            critic.score = _with_zero_bias(critic.score)
        return cls(PolicyAndCritic(policy, critic), reference, critic_is_reward_model=critic_is_reward_model)

    @torch.no_grad()
    def normalize_critic_head(self, mean: float, std: float) -> None:
        """V <- (V - mean) / std: the reward model's raw scale, which the critic inherits, onto the
        normalised scale the returns are built on (score_normalization: initial). Without it the
        first values sit on another scale and value clipping slows the correction."""
        head = self.trained.critic.score
        head.weight.div_(std)
        head.bias.sub_(mean).div_(std)

    def reference_policy(self):
        """A context giving the reference policy: the frozen copy, or the policy with adapters off."""
        if self.reference is not None:
            return contextlib.nullcontext(self.reference)
        return _adapters_off(self.trained.policy)

    def trained_policy(self) -> PreTrainedModel:
        """The policy to save: with LoRA, the adapters merged into the base weights (in place, at the end)."""
        if self.reference is None:
            return self.trained.policy.merge_and_unload()
        return self.trained.policy


def _with_zero_bias(head: nn.Linear) -> nn.Linear:
    biased = nn.Linear(head.in_features, head.out_features, bias=True).to(head.weight.device, head.weight.dtype)
    with torch.no_grad():
        biased.weight.copy_(head.weight)
        biased.bias.zero_()
    return biased


@contextlib.contextmanager
def _adapters_off(peft_model):
    with peft_model.disable_adapter():
        yield peft_model


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters."""
    total = sum(p.numel() for p in module.parameters())
    return sum(p.numel() for p in module.parameters() if p.requires_grad), total
